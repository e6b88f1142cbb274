package certstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/caddyserver/certmagic"
	"github.com/redis/go-redis/v9"

	"github.com/imapgw/imapgw/internal/testbed"
)

// client is a go-redis client of r, closed when the test ends.
func client(t testing.TB, r *testbed.Redis) redis.UniversalClient {
	t.Helper()
	rc := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{r.Addr}})
	t.Cleanup(func() { rc.Close() })
	return rc
}

func quiet(t testing.TB) *slog.Logger {
	logs := &testbed.LogBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("storage log:\n%s", logs)
		}
	})
	return slog.New(slog.NewTextHandler(logs, nil))
}

// TestStorageMirrorsFileStorage runs the same operations on certmagic's
// FileStorage and on the Redis storage and wants the same answers: values,
// existence, directory semantics of List (recursive or not), Stat and
// Delete, and fs.ErrNotExist for what is missing.
func TestStorageMirrorsFileStorage(t *testing.T) {
	r := testbed.StartRedis(t, testbed.RedisOptions{})
	ctx := context.Background()
	fileDir := t.TempDir()
	stores := map[string]certmagic.Storage{
		"file":  &certmagic.FileStorage{Path: fileDir},
		"redis": New(client(t, r), "test:", Options{Logger: quiet(t)}),
	}
	// Roughly certmagic's own layout, plus names that sort between a
	// directory and its contents ("a.txt" between "a" and "a/…").
	keys := map[string]string{
		"certificates/ca/example.com/example.com.crt":  "cert",
		"certificates/ca/example.com/example.com.key":  "key!",
		"certificates/ca/example.com/example.com.json": "{}",
		"certificates/ca/other.org/other.org.crt":      "other",
		"acme/ca/users/ops@example.com/ops.json":       "account",
		"a/b/c":                                        "abc",
		"a.txt":                                        "dot",
		"a/b.txt":                                      "b-dot",
		"top":                                          "top-level value",
	}
	for name, st := range stores {
		for k, v := range keys {
			if err := st.Store(ctx, k, []byte(v)); err != nil {
				t.Fatalf("%s: Store(%s): %v", name, k, err)
			}
		}
	}
	// Overwrite replaces.
	for _, st := range stores {
		_ = st.Store(ctx, "top", []byte("new top"))
	}

	type answer struct {
		load     string
		loadErr  bool
		notExist bool
		exists   bool
		list     []string
		listErr  string // "" | "notexist" | "other"
		listRec  []string
		terminal bool
		size     int64
		statErr  bool
	}
	ask := func(st certmagic.Storage, key string) answer {
		var a answer
		v, err := st.Load(ctx, key)
		a.load, a.loadErr, a.notExist = string(v), err != nil, errors.Is(err, fs.ErrNotExist)
		a.exists = st.Exists(ctx, key)
		l, err := st.List(ctx, key, false)
		a.list = l
		switch {
		case errors.Is(err, fs.ErrNotExist):
			a.listErr = "notexist"
		case err != nil:
			a.listErr = "other"
		}
		a.listRec, _ = st.List(ctx, key, true)
		info, err := st.Stat(ctx, key)
		a.statErr = err != nil
		if err == nil {
			a.terminal, a.size = info.IsTerminal, info.Size
		}
		return a
	}
	queries := []string{
		"certificates", "certificates/ca", "certificates/ca/example.com",
		"certificates/ca/example.com/example.com.crt", "certificates/ca/example.com/",
		"/certificates/ca/other.org", "acme", "a", "a/b", "a/b/c", "a.txt", "top",
		"missing", "certificates/missing", "certificates/ca/example",
	}
	for _, q := range queries {
		want, got := ask(stores["file"], q), ask(stores["redis"], q)
		// Directories: FileStorage reports the directory's own size.
		if !want.terminal {
			want.size, got.size = 0, 0
		}
		if fmt.Sprint(want) != fmt.Sprint(got) {
			t.Errorf("%q:\nFileStorage %+v\nRedis       %+v", q, want, got)
		}
	}

	// Below a value: FileStorage answers ENOTDIR, and so Exists says true
	// (it only treats fs.ErrNotExist as absence); Redis has no such key.
	rs := stores["redis"]
	if _, err := rs.Load(ctx, "a/b/c/d"); !errors.Is(err, fs.ErrNotExist) || rs.Exists(ctx, "a/b/c/d") {
		t.Errorf("a/b/c/d below the value a/b/c: Load error %v, Exists %v; want fs.ErrNotExist, false", err, rs.Exists(ctx, "a/b/c/d"))
	}

	// Root listing: everything at the top.
	for name, st := range stores {
		got, err := st.List(ctx, "", false)
		if err != nil || !slices.Equal(got, []string{"a", "a.txt", "acme", "certificates", "top"}) {
			t.Errorf("%s: List(\"\") = %q, %v", name, got, err)
		}
	}

	// Delete: a value, then a directory with all below it, then a missing key.
	for _, del := range []string{"a/b/c", "certificates/ca", "missing"} {
		for name, st := range stores {
			if err := st.Delete(ctx, del); err != nil {
				t.Errorf("%s: Delete(%s): %v", name, del, err)
			}
		}
		// Redis has no empty directories (a directory is a prefix of
		// stored keys); certmagic never relies on them. Prune the ones
		// the file system keeps, to compare the rest.
		pruneEmptyDirs(t, fileDir)
		for _, q := range queries {
			want, got := ask(stores["file"], q), ask(stores["redis"], q)
			if !want.terminal {
				want.size, got.size = 0, 0
			}
			if fmt.Sprint(want) != fmt.Sprint(got) {
				t.Errorf("after Delete(%s), %q:\nFileStorage %+v\nRedis       %+v", del, q, want, got)
			}
		}
	}
	// The deleted directory's values are gone from Redis, not just the index.
	rc := client(t, r)
	n, err := rc.Exists(ctx, "test:{certmagic}:k:certificates/ca/other.org/other.org.crt").Result()
	if err != nil || n != 0 {
		t.Errorf("value under a deleted directory still in Redis: %d, %v", n, err)
	}
}

// pruneEmptyDirs removes the empty directories below root, deepest first.
func pruneEmptyDirs(t *testing.T, root string) {
	t.Helper()
	var dirs []string
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && p != root {
			dirs = append(dirs, p)
		}
		return nil
	})
	for _, d := range slices.Backward(dirs) {
		if entries, err := os.ReadDir(d); err == nil && len(entries) == 0 {
			if err := os.Remove(d); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestStoragePrefixes: two fleets with different prefixes on one Redis see
// only their own keys and locks.
func TestStoragePrefixes(t *testing.T) {
	r := testbed.StartRedis(t, testbed.RedisOptions{})
	ctx := context.Background()
	rc := client(t, r)
	a, b := New(rc, "fleet-a:", Options{Logger: quiet(t)}), New(rc, "fleet-b:", Options{Logger: quiet(t)})
	if err := a.Store(ctx, "certificates/x", []byte("a")); err != nil {
		t.Fatal(err)
	}
	if b.Exists(ctx, "certificates/x") {
		t.Errorf("fleet b sees fleet a's key")
	}
	if _, err := b.List(ctx, "certificates", true); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("fleet b List = %v, want fs.ErrNotExist", err)
	}
	if err := a.Lock(ctx, "issue_cert_x"); err != nil {
		t.Fatal(err)
	}
	defer a.Unlock(ctx, "issue_cert_x")
	if ok, err := b.TryLock(ctx, "issue_cert_x"); err != nil || !ok {
		t.Errorf("fleet b TryLock of a name fleet a holds = %v, %v; want its own lock", ok, err)
	} else {
		b.Unlock(ctx, "issue_cert_x")
	}
	keys, err := rc.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if !slices.ContainsFunc([]string{"fleet-a:", "fleet-b:"}, func(p string) bool { return len(k) > len(p) && k[:len(p)] == p }) {
			t.Errorf("key %q outside the prefixes", k)
		}
	}
}
