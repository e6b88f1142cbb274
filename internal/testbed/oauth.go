package testbed

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
)

// Introspection is an OAuth 2.0 token introspection endpoint (RFC 7662) on
// 127.0.0.1, as an identity provider (Keycloak, Authentik, …) runs it: a POST
// of the form field "token" is answered {"active": true, "username": USER}
// for a token granted to USER, {"active": false} for any other. Dovecot's
// oauth2 passdb asks it (DovecotOptions.OAuth).
type Introspection struct {
	// URL is the endpoint's address.
	URL string

	mu       sync.Mutex
	tokens   map[string]string // token → user
	broken   map[string]bool   // tokens answered 500, as by a provider in trouble
	requests int
}

// StartIntrospection runs an introspection endpoint until the test ends.
func StartIntrospection(t testing.TB) *Introspection {
	t.Helper()
	in := &Introspection{tokens: map[string]string{}, broken: map[string]bool{}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("introspection endpoint: %v", err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(in.serve))
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	in.URL = srv.URL + "/introspect"
	return in
}

// Grant makes token an active token for user.
func (in *Introspection) Grant(token, user string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.tokens[token] = user
}

// Revoke makes token inactive (expired or revoked).
func (in *Introspection) Revoke(token string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	delete(in.tokens, token)
}

// Break makes the endpoint answer HTTP 500 for token, as an identity
// provider in trouble does.
func (in *Introspection) Break(token string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.broken[token] = true
}

// Requests counts the introspection requests answered: how many tokens
// reached the identity provider.
func (in *Introspection) Requests() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.requests
}

func (in *Introspection) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/introspect" {
		http.Error(w, "POST /introspect only", http.StatusMethodNotAllowed)
		return
	}
	token := r.PostFormValue("token")
	in.mu.Lock()
	in.requests++
	user, ok := in.tokens[token]
	broken := in.broken[token]
	in.mu.Unlock()
	if broken {
		http.Error(w, "introspection unavailable", http.StatusInternalServerError)
		return
	}
	answer := map[string]any{"active": false}
	if ok && token != "" {
		answer = map[string]any{"active": true, "username": user, "scope": "mail", "token_type": "Bearer"}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(answer)
}

// writeConf writes the oauth2 passdb's settings for this endpoint into dir
// and returns the file's name. Dovecot's defaults stand but for the three an
// RFC 7662 endpoint needs: the mode (POST of token=…), the URL, and the field
// naming the user ("username"; Dovecot's default is "email"). Its defaults
// active_attribute = active and active_value = true match the endpoint.
func (in *Introspection) writeConf(t testing.TB, dir string) string {
	t.Helper()
	name := filepath.Join(dir, "dovecot-oauth2.conf.ext")
	writeFile(t, name, []byte(fmt.Sprintf("introspection_mode = post\nintrospection_url = %s\nusername_attribute = username\n", in.URL)), 0o644)
	return name
}
