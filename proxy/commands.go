package proxy

// imapCommands are the command names of RFC 9051, RFC 3501 and common
// extensions. A first line naming none of them is not IMAP (an HTTP request, an
// SMTP or POP3 greeting reply, a cross-protocol attack) and gets BYE.
var imapCommands = map[string]bool{
	"CAPABILITY": true, "NOOP": true, "LOGOUT": true, "STARTTLS": true, "AUTHENTICATE": true,
	"LOGIN": true, "ENABLE": true, "SELECT": true, "EXAMINE": true, "CREATE": true,
	"DELETE": true, "RENAME": true, "SUBSCRIBE": true, "UNSUBSCRIBE": true, "LIST": true,
	"LSUB": true, "NAMESPACE": true, "STATUS": true, "APPEND": true, "IDLE": true,
	"CHECK": true, "CLOSE": true, "UNSELECT": true, "EXPUNGE": true, "SEARCH": true,
	"FETCH": true, "STORE": true, "COPY": true, "MOVE": true, "UID": true, "ID": true,
	"GETQUOTA": true, "GETQUOTAROOT": true, "SETQUOTA": true, "GETACL": true, "SETACL": true,
	"MYRIGHTS": true, "LISTRIGHTS": true, "DELETEACL": true, "GETMETADATA": true,
	"SETMETADATA": true, "COMPRESS": true, "SORT": true, "THREAD": true, "ESEARCH": true,
	"NOTIFY": true, "XLIST": true, "UNAUTHENTICATE": true, "DONE": true, "GENURLAUTH": true,
	"RESETKEY": true, "URLFETCH": true, "REPLACE": true, "XCLIENT": true,
}

func isIMAPCommand(name string) bool { return imapCommands[name] }
