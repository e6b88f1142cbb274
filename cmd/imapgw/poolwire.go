package main

import (
	"errors"
	"fmt"

	"github.com/imapgw/imapgw/admin"
	"github.com/imapgw/imapgw/backend"
)

// poolAdmin adapts *backend.Pool to admin.Backends: admin keeps its own JSON
// types and never imports the data path's packages (DESIGN.md).
type poolAdmin struct{ p *backend.Pool }

var _ admin.Backends = poolAdmin{}

func (a poolAdmin) Servers() []admin.BackendInfo {
	list := a.p.Servers()
	out := make([]admin.BackendInfo, len(list))
	for i, s := range list {
		out[i] = admin.BackendInfo{
			Name: s.Name, Address: s.Address, Weight: s.Weight, State: s.State, Sessions: s.Sessions,
			LastCheck: s.LastCheck, LastError: s.LastError, Capabilities: s.Capabilities,
		}
	}
	return out
}

func (a poolAdmin) Drain(name string, kick bool) error { return unknownServer(a.p.Drain(name, kick)) }

func (a poolAdmin) Undrain(name string) error { return unknownServer(a.p.Undrain(name)) }

func (a poolAdmin) Where(user string) admin.UserInfo {
	u := a.p.Where(user)
	return admin.UserInfo{
		User: u.User, Backend: u.Backend, Reason: u.Reason, Pinned: u.Pinned, Until: u.Until, Open: u.Sessions,
	}
}

func (a poolAdmin) Move(user, name string) error { return unknownServer(a.p.Move(user, name)) }

func (a poolAdmin) Kick(user string) int { return a.p.Kick(user) }

// unknownServer marks the pool's "no such server" so that admin answers 404.
func unknownServer(err error) error {
	if errors.Is(err, backend.ErrUnknownServer) {
		return fmt.Errorf("%w: %w", admin.ErrUnknownBackend, err)
	}
	return err
}
