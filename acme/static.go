package acme

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"time"
)

// staticCert is one certificate served for every name: the self-signed and
// the files sources have exactly one.
type staticCert struct {
	cert tls.Certificate // Leaf is set
	info CertInfo
}

func newStaticCert(cert tls.Certificate, source string) *staticCert {
	leaf := cert.Leaf
	names := append([]string(nil), leaf.DNSNames...)
	for _, ip := range leaf.IPAddresses {
		names = append(names, ip.String())
	}
	return &staticCert{cert: cert, info: CertInfo{
		Names:    names,
		NotAfter: leaf.NotAfter,
		Issuer:   leaf.Issuer.String(),
		Source:   source,
	}}
}

// selfSignedLifetime is long enough for any development run; a new
// certificate is made at every start anyway.
const selfSignedLifetime = 365 * 24 * time.Hour

// selfSigned makes an ECDSA P-256 certificate for names (the hostname first);
// a name that parses as an IP address goes into the IP SANs, as clients
// connecting by address check those.
func selfSigned(names []string, now time.Time) (*staticCert, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generating serial number: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: names[0], Organization: []string{"imapgw self-signed"}},
		NotBefore:    now.Add(-time.Hour), // tolerate clients whose clocks lag
		NotAfter:     now.Add(selfSignedLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("creating self-signed certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing self-signed certificate: %w", err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	return newStaticCert(cert, sourceSelfSigned), nil
}

// loadFiles reads and checks a PEM chain and its key. Errors name the file at
// fault, since the operator has to know which one to fix.
func loadFiles(certFile, keyFile string, now time.Time) (*staticCert, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("tls.cert_file: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("tls.key_file: %w", err)
	}
	leaf, err := firstCertificate(certPEM)
	if err != nil {
		return nil, fmt.Errorf("tls.cert_file %s: %w", certFile, err)
	}
	if now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("tls.cert_file %s: certificate expired at %s", certFile, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("tls.key_file %s (key of %s): %w", keyFile, certFile, err)
	}
	cert.Leaf = leaf
	return newStaticCert(cert, sourceFiles), nil
}

// firstCertificate parses the leaf: the first CERTIFICATE block.
func firstCertificate(data []byte) (*x509.Certificate, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no PEM CERTIFICATE block")
		}
		if b.Type == "CERTIFICATE" {
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("parsing certificate: %w", err)
			}
			return c, nil
		}
	}
}
