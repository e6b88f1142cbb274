package acme

import (
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func TestSlogLevel(t *testing.T) {
	tests := []struct {
		in   zapcore.Level
		want slog.Level
	}{
		{zapcore.DebugLevel, slog.LevelDebug},
		{zapcore.InfoLevel, slog.LevelDebug},
		{zapcore.WarnLevel, slog.LevelInfo},
		{zapcore.ErrorLevel, slog.LevelWarn},
		{zapcore.DPanicLevel, slog.LevelWarn},
	}
	for _, tc := range tests {
		if got := slogLevel(tc.in); got != tc.want {
			t.Errorf("slogLevel(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

// TestZapBridge: certmagic's zap lines reach the slog handler with their
// fields, the logger's name and With fields; lines below the handler's level
// are dropped before they are built.
func TestZapBridge(t *testing.T) {
	buf := &logBuffer{}
	zl := newZapLogger(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	zl = zl.Named("obtain").With(zap.String("issuer", "pebble"))

	zl.Info("acquiring lock", zap.String("identifier", "a.test")) // becomes debug: dropped
	zl.Error("could not get certificate",
		zap.String("identifier", "a.test"),
		zap.Error(errors.New("connection refused")),
		zap.Duration("remaining", 90*time.Second),
		zap.Strings("sans", []string{"a.test", "b.test"}))

	out := buf.String()
	if strings.Contains(out, "acquiring lock") {
		t.Errorf("an info line of certmagic's reached an info-level log:\n%s", out)
	}
	for _, want := range []string{
		"level=WARN", `msg="could not get certificate"`, "logger=certmagic.obtain", "issuer=pebble",
		"identifier=a.test", `error="connection refused"`, "remaining=1m30s", `sans="[a.test b.test]"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("bridged line = %q, want it to contain %q", out, want)
		}
	}
}
