// Package acme provides the gateway's TLS certificates from one of three
// sources chosen by tls.certificate: "acme" (certmagic obtains and renews them
// from an ACME CA, RFC 8555, answering HTTP-01 and TLS-ALPN-01 challenges,
// RFC 8737, on listeners of its own), "files" (a PEM chain and key, reloaded
// when they change or on demand) and "self-signed" (generated at start, for
// development). It hands out one *tls.Config whose GetCertificate picks the
// certificate per handshake, so a new certificate reaches new connections
// only and established ones are never touched.
//
// It does not accept client connections, speak IMAP, or decide readiness of
// the whole process; it reports whether a certificate is loaded (Ready), what
// is loaded (Certificates) and each name's expiry as a Prometheus metric.
package acme
