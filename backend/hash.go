package backend

import (
	"math"
	"strings"
	"unicode/utf8"
	"unsafe"
)

// Weighted rendezvous (highest random weight) hashing: a user goes to the
// server with the highest score -weight / ln(u), u = hash(user, server) in
// (0, 1). Each server's share of users is its share of the total weight, and
// removing a server moves only its own users (Schindelhauer & Schomaker,
// "Weighted distributed hash tables", 2005). The hash is FNV-1a of the
// lower-cased user mixed with a hash of the server's name: every gateway node
// computes the same order with no shared state.

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// fnv1a hashes s as it is.
func fnv1a(s string) uint64 {
	h := uint64(fnvOffset)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return h
}

// mix is splitmix64's finalizer: it spreads FNV's weak low bits over all 64
// before the user and server hashes meet.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// score is the rendezvous score of a user (its hash) on a server (the hash of
// its name, and its weight).
func score(user, server uint64, weight float64) float64 {
	h := mix(user ^ mix(server))
	// The top 53 bits as a float in (0, 1): never 0, never 1, so ln(u) < 0.
	u := (float64(h>>11) + 0.5) / (1 << 53)
	return -weight / math.Log(u)
}

// maxKey bounds the users lower-cased on the stack; longer ones (rare) allocate.
const maxKey = 128

// lowerKey returns user lower-cased: user itself when it already is, else
// ASCII folded into buf, else strings.ToLower (non-ASCII upper case).
// The result is only valid until buf is reused.
func lowerKey(user string, buf *[maxKey]byte) string {
	upper := false
	for i := 0; i < len(user); i++ {
		c := user[i]
		if c >= utf8.RuneSelf {
			return strings.ToLower(user)
		}
		upper = upper || 'A' <= c && c <= 'Z'
	}
	if !upper {
		return user
	}
	if len(user) > maxKey {
		return strings.ToLower(user)
	}
	b := buf[:len(user)]
	for i := 0; i < len(user); i++ {
		c := user[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b[i] = c
	}
	return unsafeString(b)
}

// unsafeString views b as a string without copying: Route only looks it up in
// maps, never keeps it, and that keeps the hash path free of allocations.
func unsafeString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }
