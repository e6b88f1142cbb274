package testbed

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// NeedNftables stops the test unless it can change the kernel's nftables:
// root (CAP_NET_ADMIN) and the nft command, which tests use to look at and
// hand-edit tables (imapgw itself talks netlink). In CI (CI=true) either
// missing fails the test; elsewhere it is skipped loudly.
func NeedNftables(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI: the nftables tests need root (CAP_NET_ADMIN); run the tests as root")
		}
		t.Skipf("!!! SKIPPED: not root: this test changes the kernel's nftables (CAP_NET_ADMIN). Run as root !!!")
	}
	Need(t, "nft")
}

var nftSeq atomic.Int64

// NftTable returns a table name of its own for this test (tests run in
// parallel, and a leftover drop rule would hurt later ones) and deletes that
// inet table when the test ends.
func NftTable(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("imapgw_test_%d_%d", os.Getpid(), nftSeq.Add(1))
	t.Cleanup(func() {
		if NftHasTable(name) {
			if out, err := exec.Command(Path("nft"), "delete", "table", "inet", name).CombinedOutput(); err != nil {
				t.Errorf("removing nftables table inet %s: %v: %s", name, err, out)
			}
		}
	})
	return name
}

// Nft runs nft with args and fails the test on an error.
func Nft(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(Path("nft"), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("nft %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// NftHasTable reports whether inet table name exists.
func NftHasTable(name string) bool {
	return exec.Command(Path("nft"), "list", "table", "inet", name).Run() == nil
}

// NftElement is one element of a set as nft lists it.
type NftElement struct {
	Timeout time.Duration // as set, whole seconds
	Expires time.Duration // left, whole seconds
}

// NftElements lists inet table's set: "10.0.0.9" or "2001:db8::/64" → element.
func NftElements(t testing.TB, table, set string) map[string]NftElement {
	t.Helper()
	var doc struct {
		Nftables []struct {
			Set *struct {
				Elem []struct {
					Elem struct {
						Val     json.RawMessage `json:"val"`
						Timeout int64           `json:"timeout"`
						Expires int64           `json:"expires"`
					} `json:"elem"`
				} `json:"elem"`
			} `json:"set"`
		} `json:"nftables"`
	}
	out := Nft(t, "-j", "list", "set", "inet", table, set)
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("nft -j list set: %v: %s", err, out)
	}
	elems := map[string]NftElement{}
	for _, o := range doc.Nftables {
		if o.Set == nil {
			continue
		}
		for _, e := range o.Set.Elem {
			elems[nftValue(t, e.Elem.Val)] = NftElement{
				Timeout: time.Duration(e.Elem.Timeout) * time.Second,
				Expires: time.Duration(e.Elem.Expires) * time.Second,
			}
		}
	}
	return elems
}

// nftValue is an element's key: an address, or a prefix as addr/len.
func nftValue(t testing.TB, raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var p struct {
		Prefix struct {
			Addr string `json:"addr"`
			Len  int    `json:"len"`
		} `json:"prefix"`
	}
	if err := json.Unmarshal(raw, &p); err != nil || p.Prefix.Addr == "" {
		t.Fatalf("nft element value %s: not an address or a prefix", raw)
	}
	return fmt.Sprintf("%s/%d", p.Prefix.Addr, p.Prefix.Len)
}
