package main

import (
	"log/slog"

	"github.com/caddyserver/certmagic"
	"github.com/redis/go-redis/v9"

	"github.com/imapgw/imapgw/backend"
	"github.com/imapgw/imapgw/cluster/certstore"
	"github.com/imapgw/imapgw/cluster/pinstore"
)

// clusterStores builds, on the fleet's Redis client, the certificate
// storage (for acme.Options.Storage: one node orders and renews, the others
// load) and the user pinning (for backend.Options.Affinity, with
// AffinityTimeout = cluster.timeout) that the gateways of a fleet share.
// prefix is cluster.key_prefix and node cluster.node. Only called with
// [cluster] configured: a single node keeps FileStorage and local pinning.
func clusterStores(rc redis.UniversalClient, prefix, node string, log *slog.Logger) (certmagic.Storage, backend.AffinityStore) {
	return certstore.New(rc, prefix, certstore.Options{Logger: log.With("part", "cluster")}),
		pinstore.New(rc, prefix, node, pinstore.Options{})
}
