package limiter

import (
	"strings"

	"github.com/imapgw/imapgw/conf"
)

// accountName is the account a login name counts against under
// bans.account_key (see conf.Bans.AccountKey for the rules). Where a backend
// accepts several names for one mailbox, each name would otherwise get its own
// account budget (issue 11, point 7).
func accountName(mode, user string) string {
	u := strings.ToLower(user)
	if mode != conf.AccountKeyLocalPart && mode != conf.AccountKeyStripRealm {
		return u
	}
	// Exchange treats \ and / alike: DOMAIN\user\shared, user@dom\shared@dom.
	parts := strings.Split(strings.ReplaceAll(u, "/", `\`), `\`)
	id := u
	switch {
	case strings.Contains(parts[0], "@"): // a UPN, maybe followed by a shared mailbox
		id = parts[0]
	case mode == conf.AccountKeyStripRealm && len(parts) > 1: // DOMAIN\user[\shared]
		id = parts[1]
	}
	if i := strings.LastIndexByte(id, '@'); i >= 0 {
		id = id[:i]
	}
	if id == "" { // "@corp", "corp\": nothing left to share a budget with
		return u
	}
	return id
}
