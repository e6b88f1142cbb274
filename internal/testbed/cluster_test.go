package testbed

import (
	"net"
	"testing"
	"time"
)

// TestDovecotCluster: two instances share the mail root (a message appended on
// one is seen on the other), each log names only the users that logged in there,
// and a silent server accepts without greeting.
func TestDovecotCluster(t *testing.T) {
	t.Parallel()
	nodes := StartDovecotCluster(t, 2, DovecotOptions{})
	if nodes[0].Addr == nodes[1].Addr || nodes[0].Dir == nodes[1].Dir {
		t.Fatalf("instances share %s / %s", nodes[0].Addr, nodes[0].Dir)
	}
	msg := Message(600)
	appendAndFetch(t, nodes[0], msg)

	c := dialPlain(t, nodes[1].Addr)
	defer c.Close()
	if err := c.Login("bob", nodes[1].Users["bob"]).Wait(); err != nil {
		t.Fatalf("Login(bob) on the second instance = %v", err)
	}
	data, err := c.Select("INBOX", nil).Wait()
	if err != nil || data.NumMessages != 1 {
		t.Fatalf("SELECT INBOX on the second instance = %v messages, %v; want the 1 appended on the first", data, err)
	}
	login(t, dialPlain(t, nodes[1].Addr), nodes[1], "alice")
	nodes[1].WaitLogins(t, "alice", 1, 5*time.Second)
	nodes[1].WaitLogins(t, "bob", 1, 5*time.Second)
	if n := nodes[0].LoginCount("alice"); n != 0 {
		t.Errorf("first instance logged %d logins of alice, want 0", n)
	}
	if got := nodes[0].Logins(); len(got) != 1 || got[0] != "bob" {
		t.Errorf("first instance Logins() = %q, want [bob]", got)
	}

	conn, err := net.Dial("tcp", StartSilentServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := conn.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("silent server sent %d bytes, %v", n, err)
	}
}
