package conf

import "strings"

// Auth chooses the SASL mechanisms the gateway offers (AUTH=… after TLS) and
// accepts in AUTHENTICATE. The LOGIN command is not a mechanism: it is
// governed by LOGINDISABLED alone.
type Auth struct {
	// Mechanisms, upper or lower case. Default (empty): PLAIN and LOGIN, plus
	// XOAUTH2 and OAUTHBEARER when the backend advertises them before login
	// (its health checks record that; without them, the first login's
	// connection). A list given here is offered as is, whatever the backend says.
	Mechanisms []string `toml:"mechanisms"`
}

// SASL mechanisms the gateway can parse and replay.
const (
	MechPlain       = "PLAIN"
	MechLogin       = "LOGIN"
	MechXOAuth2     = "XOAUTH2"
	MechOAuthBearer = "OAUTHBEARER"
)

// OAuthMechanisms are the mechanisms the default list takes from the backend.
var OAuthMechanisms = []string{MechXOAuth2, MechOAuthBearer}

func (v *validator) auth(a *Auth) {
	seen := map[string]bool{}
	for _, m := range a.Mechanisms {
		u := strings.ToUpper(m)
		v.oneOf("auth.mechanisms", u, MechPlain, MechLogin, MechXOAuth2, MechOAuthBearer)
		if seen[u] {
			v.fail("auth.mechanisms", "%q is listed twice", m)
		}
		seen[u] = true
	}
}
