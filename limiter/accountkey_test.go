package limiter

import (
	"errors"
	"testing"

	"github.com/imapgw/imapgw/conf"
)

func TestAccountName(t *testing.T) {
	tests := []struct {
		in                     string
		user, localPart, realm string
	}{
		{"alice", "alice", "alice", "alice"},
		{"Alice", "alice", "alice", "alice"},
		{"alice@corp", "alice@corp", "alice", "alice"},
		{"Alice@Corp.Example", "alice@corp.example", "alice", "alice"},
		{`CORP\alice`, `corp\alice`, `corp\alice`, "alice"},
		{"corp/alice", "corp/alice", "corp/alice", "alice"},
		// Exchange shared mailboxes: the identity authenticates, the rest is the mailbox.
		{`alice@corp\shared@corp`, `alice@corp\shared@corp`, "alice", "alice"},
		{"alice@corp/shared", "alice@corp/shared", "alice", "alice"},
		{`CORP\alice\shared`, `corp\alice\shared`, `corp\alice\shared`, "alice"},
		{`corp\alice@corp.example`, `corp\alice@corp.example`, `corp\alice`, "alice"},
		{"a@b@c", "a@b@c", "a@b", "a@b"},
		// Nothing left: the whole name, so such names do not all share one budget.
		{"@corp", "@corp", "@corp", "@corp"},
		{`corp\`, `corp\`, `corp\`, `corp\`},
		{`\`, `\`, `\`, `\`},
		{"", "", "", ""},
	}
	for _, tt := range tests {
		for mode, want := range map[string]string{
			conf.AccountKeyUser:       tt.user,
			conf.AccountKeyLocalPart:  tt.localPart,
			conf.AccountKeyStripRealm: tt.realm,
		} {
			if got := accountName(mode, tt.in); got != want {
				t.Errorf("accountName(%q, %q) = %q, want %q", mode, tt.in, got, want)
			}
		}
	}
}

// TestAccountKeyShared: with strip-realm, failures under three spellings of
// one name protect one account; with the default they are three accounts.
func TestAccountKeyShared(t *testing.T) {
	for _, tt := range []struct {
		mode      string
		protected bool
	}{{conf.AccountKeyUser, false}, {conf.AccountKeyStripRealm, true}} {
		l, _ := newTest(t, func(b *conf.Bans, _ *conf.Limits) {
			b.AccountFailures = 3
			b.AccountKey = tt.mode
		}, Options{})
		for i, u := range []string{"alice", "alice@corp", `CORP\alice`} {
			l.FailedAt(t0, addr("203.0.113."+string(rune('1'+i))), u, []byte("guess"))
		}
		tryErr(l, t0, addr("203.0.113.10"), "Alice") // this minute's attempt, if protected
		err := tryErr(l, t0, addr("203.0.113.11"), "alice@corp")
		if got := errors.Is(err, ErrRefused); got != tt.protected {
			t.Errorf("account_key %q: second stranger on alice@corp = %v, want refused %v", tt.mode, err, tt.protected)
		}
	}
}
