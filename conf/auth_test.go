package conf

import (
	"reflect"
	"strings"
	"testing"
)

func TestAuthMechanisms(t *testing.T) {
	c, err := Parse("t.toml", []byte(minimal))
	if err != nil || c.Auth.Mechanisms != nil {
		t.Fatalf("Parse(minimal) = %v, %v, want no auth.mechanisms (the backend's)", c.Auth.Mechanisms, err)
	}
	c, err = Parse("t.toml", []byte(minimal+"[auth]\nmechanisms = [\"PLAIN\", \"login\", \"XOAUTH2\", \"OAUTHBEARER\"]\n"))
	if want := []string{"PLAIN", "login", "XOAUTH2", "OAUTHBEARER"}; err != nil || !reflect.DeepEqual(c.Auth.Mechanisms, want) {
		t.Errorf("Parse(mechanisms) = %v, %v, want %v", c.Auth.Mechanisms, err, want)
	}
	for src, want := range map[string]string{
		"[auth]\nmechanisms = [\"PLAIN\", \"CRAM-MD5\"]\n": "t.toml:11: auth.mechanisms: \"CRAM-MD5\" is not one of PLAIN, LOGIN, XOAUTH2, OAUTHBEARER",
		"[auth]\nmechanisms = [\"PLAIN\", \"plain\"]\n":    "t.toml:11: auth.mechanisms: \"plain\" is listed twice",
		"[auth]\nmechanism = [\"PLAIN\"]\n":                "auth.mechanism",
	} {
		if _, err := Parse("t.toml", []byte(minimal+src)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", src, err, want)
		}
	}
}
