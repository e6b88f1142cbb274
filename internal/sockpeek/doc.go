// Package sockpeek looks at a socket without reading from it: whether a
// read would return at once (data, an EOF or an error) or would block. The
// relay waits on it without holding a buffer (proxy), and a warm backend
// connection is checked with it before a login takes it (backend).
package sockpeek
