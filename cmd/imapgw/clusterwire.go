package main

import (
	"fmt"
	"time"

	"github.com/imapgw/imapgw/admin"
	"github.com/imapgw/imapgw/cluster"
	"github.com/imapgw/imapgw/conf"
)

// startCluster links the policy to the other gateways when [cluster] is set
// (issue 13): before the listeners open, so the first login already counts
// fleet-wide. Its loop keeps reconnecting in the background; the gateway
// serves whether Redis is there or not. It leaves g.cl nil for a single node.
func (g *gateway) startCluster() error {
	c := g.cfg.Cluster
	if !c.Enabled() {
		return nil
	}
	cl, err := cluster.New(c, cluster.Options{Logger: g.log.With("part", "cluster"), Registerer: g.reg})
	if err != nil {
		return err
	}
	cl.Attach(g.lim)
	g.cl = cl
	// g.ctx: lifts made while sessions drain still reach the other nodes.
	g.bg.Add(1)
	go func() { defer g.bg.Done(); cl.Run(g.ctx) }()
	// A node joining a fleet enforces its live bans from its first client;
	// with Redis away it starts anyway, on the local policy.
	select {
	case <-cl.Synced():
	case <-time.After(2 * time.Second):
		g.log.Warn("cluster: redis not reachable at start: serving on the local policy until it is", "redis", conf.RedactURL(c.Redis))
	}
	return nil
}

// clusterInfo is admin's view of the cluster: nil for a single node.
func (g *gateway) clusterInfo() func() admin.ClusterInfo {
	if g.cl == nil {
		return nil
	}
	return func() admin.ClusterInfo {
		s := g.cl.Status()
		info := admin.ClusterInfo{Enabled: true, Redis: s.Redis, Up: s.Up, LastError: s.LastError, LastErrorAt: s.LastErrorAt,
			Node: s.Node, KeyPrefix: s.KeyPrefix, Timeout: s.Timeout, Nodes: []admin.ClusterNode{}}
		for _, n := range s.Nodes {
			info.Nodes = append(info.Nodes, admin.ClusterNode{Name: n.Name, LastSeen: n.LastSeen})
		}
		return info
	}
}

// clusterReload refuses a reload that changes [cluster]: the client and the
// account hashing are set up at start, so that takes a restart.
func clusterReload(old, nw conf.Cluster) error {
	if old != nw {
		return fmt.Errorf("cluster: changed: takes a restart")
	}
	return nil
}

// fmtCluster is `imapgw status`'s cluster line.
func fmtCluster(c admin.ClusterInfo) string {
	if !c.Enabled {
		return "off (single node)"
	}
	state := "up"
	if !c.Up {
		state = "DOWN (local policy only): " + c.LastError
	}
	names := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		names[i] = n.Name
	}
	return fmt.Sprintf("%s, node %s, redis %s, %d nodes seen %v", state, c.Node, c.Redis, len(c.Nodes), names)
}
