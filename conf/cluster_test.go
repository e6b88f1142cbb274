package conf

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestClusterDefaults(t *testing.T) {
	c, err := Parse("t.toml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	cl := c.Cluster
	if cl.Enabled() || cl.KeyPrefix != "imapgw:" || cl.Timeout.Duration != 100*time.Millisecond || cl.Node == "" {
		t.Errorf("defaults: %+v, want disabled, imapgw:, 100ms, the hostname", cl)
	}
}

func TestClusterEndpoint(t *testing.T) {
	tests := []struct {
		url  string
		want RedisEndpoint
	}{
		{"redis://127.0.0.1:6379/0", RedisEndpoint{Scheme: "redis", Addrs: []string{"127.0.0.1:6379"}}},
		{"redis://:s3cret@redis.example:6380/2", RedisEndpoint{Scheme: "redis", Addrs: []string{"redis.example:6380"}, DB: 2, Password: "s3cret"}},
		{"rediss://gw:p%40ss@r.example", RedisEndpoint{Scheme: "rediss", Addrs: []string{"r.example:6379"}, Username: "gw", Password: "p@ss"}},
		{"redis-sentinel://s1:26379,s2/mymaster?db=1", RedisEndpoint{Scheme: "redis-sentinel", Addrs: []string{"s1:26379", "s2:26379"}, Master: "mymaster", DB: 1}},
	}
	for _, tt := range tests {
		got, err := Cluster{Redis: tt.url}.Endpoint()
		if err != nil || got.Scheme != tt.want.Scheme || !slices.Equal(got.Addrs, tt.want.Addrs) || got.Master != tt.want.Master ||
			got.DB != tt.want.DB || got.Username != tt.want.Username || got.Password != tt.want.Password {
			t.Errorf("Endpoint(%q) = %+v, %v, want %+v", tt.url, got, err, tt.want)
		}
	}
}

// TestClusterErrors: bad settings name file, line and key, and the password
// in the URL never appears in an error.
func TestClusterErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	tests := []struct{ body, want string }{
		{`redis = "http://:hunter2@h:1/0"`, `t.toml:12: cluster.redis: scheme "http" is not one of`},
		{`redis = "redis://:hunter2@h:99999/0"`, `cluster.redis: "redis://:xxxxx@h:99999/0" has a bad host:port`},
		{`redis = "redis://:hunter2@a:1,b:2/0"`, `only redis-sentinel:// takes a list`},
		{`redis = "redis-sentinel://:hunter2@a:1,b:2"`, `names no master`},
		{"redis = \"redis://:hunter2@h:1/0\"\npassword_file = \"" + missing + "\"", `cluster.password_file: is set, yet cluster.redis has a password too`},
		{"redis = \"redis://h:1/0\"\npassword_file = \"" + missing + "\"", `cluster.password_file: "` + missing + `" cannot be read: no such file`},
		{"redis = \"redis://h:1/0\"\ntimeout = \"0s\"", `cluster.timeout: must be between 0 and 10s`},
		{"redis = \"redis://h:1/0\"\nnode = \"a b\"", `cluster.node: "a b" is not a node name`},
		{"redis = \"redis://h:1/0\"\nkey_prefix = \"gw 1:\"", `cluster.key_prefix: "gw 1:" has a space`},
	}
	for _, tt := range tests {
		_, err := Parse("t.toml", []byte(minimal+"\n[cluster]\n"+tt.body+"\n"))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Parse(%s) = %v, want %q", tt.body, err, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Parse(%s) = %v: the error shows the password", tt.body, err)
		}
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"redis://:pw@h:1/0":         "redis://:xxxxx@h:1/0",
		"rediss://u:p@ss@h/0":       "rediss://u:xxxxx@h/0",
		"redis://h:1/0":             "redis://h:1/0",
		"redis-sentinel://:x@a,b/m": "redis-sentinel://:xxxxx@a,b/m",
		"garbage:secret@h":          "xxxxx",
		"redis://user@h:1/0":        "redis://user@h:1/0",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}
