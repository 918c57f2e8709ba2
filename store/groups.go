package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

type memberRecord struct {
	Kind    Kind   `json:"kind"`
	Display string `json:"display,omitempty"`
}

func validateGroup(g *Group) error {
	if strings.TrimSpace(g.DisplayName) == "" {
		return fmt.Errorf("displayName is required and must not be blank: %w", ErrInvalid)
	}
	for _, m := range g.Members {
		if m.ID == "" {
			return fmt.Errorf("a member has no value (the member's id): %w", ErrInvalid)
		}
		if err := checkIndexable("members.value", m.ID); err != nil {
			return err
		}
	}
	return nil
}

// CreateGroup stores g (with g.Members) as a new group of tenant t and
// returns the stored record. Errors as for CreateUser.
func (s *Store) CreateGroup(ctx context.Context, t string, g Group) (Group, error) {
	defer s.writing()()
	g.Members = dedupeMembers(g.Members)
	if err := validateGroup(&g); err != nil {
		return Group{}, fmt.Errorf("store: create group: %w", err)
	}
	now := s.now().UTC()
	g.ID = NewID()
	g.Meta = Meta{Created: now, LastModified: now, Version: 1}
	rules := s.rulesFor(t)
	data, err := json.Marshal(&g)
	if err != nil {
		return Group{}, fmt.Errorf("store: create group: encode: %w", err)
	}
	var out Group
	err = s.updateTenant(ctx, t, func(tb bucket) error {
		if err := indexGroup(tb, &g, nil, rules); err != nil {
			return err
		}
		if err := tb.Bucket(bucketGroups).Put([]byte(g.ID), data); err != nil {
			return err
		}
		out = g
		out.Members, err = setMembers(tb, g.ID, nil, g.Members)
		return err
	})
	if err != nil {
		return Group{}, fmt.Errorf("store: create group %q: %w", g.DisplayName, err)
	}
	s.notifyGroup(t, &out)
	return out, nil
}

func (s *Store) notifyGroup(t string, g *Group) {
	s.notify(Change{Tenant: t, Kind: KindGroup, ID: g.ID})
}

// Group returns group id of tenant t, with its members when withMembers is
// set, or ErrNotFound.
func (s *Store) Group(ctx context.Context, t, id string, withMembers bool) (Group, error) {
	var g Group
	err := s.viewTenant(ctx, t, func(tb *bolt.Bucket) error {
		return getGroup(tb, id, withMembers, &g)
	})
	if err != nil {
		return Group{}, fmt.Errorf("store: group %q: %w", id, err)
	}
	return g, nil
}

func getGroup(tb *bolt.Bucket, id string, withMembers bool, g *Group) error {
	data := tb.Bucket(bucketGroups).Get([]byte(id))
	if data == nil {
		return fmt.Errorf("group %q: %w", id, ErrNotFound)
	}
	if err := json.Unmarshal(data, g); err != nil {
		return fmt.Errorf("decode group %q: %w", id, err)
	}
	if withMembers {
		g.Members = members(tb, id)
	}
	return nil
}

func members(tb *bolt.Bucket, gid string) []Member {
	prefix := append([]byte(gid), 0)
	out := []Member{} // loaded and empty is not the same as not loaded
	c := tb.Bucket(bucketMembers).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		var r memberRecord
		_ = json.Unmarshal(v, &r) // a damaged record still names its member
		if r.Kind == "" {
			r.Kind = KindUser
		}
		out = append(out, Member{ID: string(k[len(prefix):]), Kind: r.Kind, Display: r.Display})
	}
	return out
}

// setMembers makes the member list of group gid equal want, given the
// current list old, touching only what changed. It returns the stored list.
func setMembers(tb bucket, gid string, old, want []Member) ([]Member, error) {
	mb, ob := tb.Bucket(bucketMembers), tb.Bucket(bucketMemberOf)
	keep := make(map[string]bool, len(want))
	for _, m := range want {
		keep[m.ID] = true
	}
	for _, m := range old {
		if !keep[m.ID] {
			if err := mb.Delete(indexKey(nil, gid, m.ID)); err != nil {
				return nil, err
			}
			if err := ob.Delete(indexKey(nil, m.ID, gid)); err != nil {
				return nil, err
			}
		}
	}
	oldByID := make(map[string]Member, len(old))
	for _, m := range old {
		oldByID[m.ID] = m
	}
	out := make([]Member, 0, len(want))
	for _, m := range want {
		if m.Kind == "" {
			m.Kind = KindUser
			if tb.Bucket(bucketGroups).Get([]byte(m.ID)) != nil {
				m.Kind = KindGroup
			}
		}
		out = append(out, m)
		if o, ok := oldByID[m.ID]; ok && o.Display == m.Display && o.Kind == m.Kind {
			continue
		}
		rec, err := json.Marshal(memberRecord{Kind: m.Kind, Display: m.Display})
		if err != nil {
			return nil, err
		}
		if err := mb.Put(indexKey(nil, gid, m.ID), rec); err != nil {
			return nil, err
		}
		if err := ob.Put(indexKey(nil, m.ID, gid), nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func dedupeMembers(ms []Member) []Member {
	seen := make(map[string]int, len(ms))
	out := ms[:0:0]
	for _, m := range ms {
		if i, ok := seen[m.ID]; ok {
			if m.Display != "" {
				out[i].Display = m.Display
			}
			continue
		}
		seen[m.ID] = len(out)
		out = append(out, m)
	}
	return out
}

// UpdateGroup applies fn to group id of tenant t (with its members loaded)
// and stores the result, writing only the membership changes. Semantics as
// for UpdateUser.
func (s *Store) UpdateGroup(ctx context.Context, t, id string, ifVersion uint64, fn func(*Group) error) (Group, error) {
	defer s.writing()()
	rules := s.rulesFor(t)
	var out Group
	err := s.updateTenant(ctx, t, func(tb bucket) error {
		var g Group
		if err := getGroup(tb.raw(), id, true, &g); err != nil {
			return err
		}
		if ifVersion != 0 && g.Meta.Version != ifVersion {
			return fmt.Errorf("group %q is at version %d, not %d: %w", id, g.Meta.Version, ifVersion, ErrPrecondition)
		}
		// What the write needs of the group as it was: its id, meta,
		// indexed values and members. fn may change g's members in place.
		old := g
		old.Members = slices.Clone(g.Members)
		if err := fn(&g); err != nil {
			return err
		}
		g.Members = dedupeMembers(g.Members)
		if err := validateGroup(&g); err != nil {
			return err
		}
		g.ID, g.Meta.Created = old.ID, old.Meta.Created
		g.Meta.Version = old.Meta.Version + 1
		g.Meta.LastModified = s.now().UTC()
		if err := indexGroup(tb, &g, &old, rules); err != nil {
			return err
		}
		ms, err := setMembers(tb, id, old.Members, g.Members)
		if err != nil {
			return err
		}
		g.Members = nil
		data, err := json.Marshal(&g)
		if err != nil {
			return err
		}
		g.Members = ms
		out = g
		return tb.Bucket(bucketGroups).Put([]byte(id), data)
	})
	if err != nil {
		return Group{}, fmt.Errorf("store: update group %q: %w", id, err)
	}
	s.notifyGroup(t, &out)
	return out, nil
}

// DeleteGroup removes group id of tenant t, its member list and its own
// memberships in other groups. Returns ErrNotFound if it does not exist.
func (s *Store) DeleteGroup(ctx context.Context, t, id string) error {
	defer s.writing()()
	var parents []string
	err := s.updateTenant(ctx, t, func(tb bucket) error {
		var g Group
		if err := getGroup(tb.raw(), id, true, &g); err != nil {
			return err
		}
		if err := unindexGroup(tb, &g); err != nil {
			return err
		}
		if _, err := setMembers(tb, id, g.Members, nil); err != nil {
			return err
		}
		var err error
		if parents, err = dropMemberships(tb, id, s.now().UTC()); err != nil {
			return err
		}
		return tb.Bucket(bucketGroups).Delete([]byte(id))
	})
	if err != nil {
		return fmt.Errorf("store: delete group %q: %w", id, err)
	}
	s.notify(Change{Tenant: t, Kind: KindGroup, ID: id})
	for _, p := range parents {
		s.notify(Change{Tenant: t, Kind: KindGroup, ID: p})
	}
	return nil
}

// dropMemberships removes member mid from every group holding it, bumps
// those groups' versions, and returns their ids.
func dropMemberships(tb bucket, mid string, now time.Time) ([]string, error) {
	gids := idsFor(tb.Bucket(bucketMemberOf).raw(), mid)
	for _, gid := range gids {
		if err := tb.Bucket(bucketMembers).Delete(indexKey(nil, gid, mid)); err != nil {
			return nil, err
		}
		if err := tb.Bucket(bucketMemberOf).Delete(indexKey(nil, mid, gid)); err != nil {
			return nil, err
		}
		var g Group
		if err := getGroup(tb.raw(), gid, false, &g); err != nil {
			if errors.Is(err, ErrNotFound) {
				continue
			}
			return nil, err
		}
		g.Meta.Version++
		g.Meta.LastModified = now
		if err := putJSON(tb.Bucket(bucketGroups), []byte(gid), &g); err != nil {
			return nil, err
		}
	}
	return gids, nil
}

// GroupsOf returns the groups of tenant t that list member id directly.
func (s *Store) GroupsOf(ctx context.Context, t, id string) ([]Group, error) {
	var out []Group
	err := s.viewTenant(ctx, t, func(tb *bolt.Bucket) error {
		for _, gid := range idsFor(tb.Bucket(bucketMemberOf), id) {
			var g Group
			if err := getGroup(tb, gid, false, &g); err != nil {
				if errors.Is(err, ErrNotFound) {
					continue
				}
				return err
			}
			out = append(out, g)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: groups of %q: %w", id, err)
	}
	return out, nil
}

// LookupGroups returns the groups of tenant t whose idx attribute equals
// value, without members.
func (s *Store) LookupGroups(ctx context.Context, t string, idx Index, value string) ([]Group, error) {
	var out []Group
	err := s.viewTenant(ctx, t, func(tb *bolt.Bucket) error {
		b := tb.Bucket(bucketIndexes).Bucket([]byte(idx))
		if b == nil {
			return nil
		}
		for _, id := range idsFor(b, NormalizeIndexValue(idx, value)) {
			var g Group
			if err := getGroup(tb, id, false, &g); err != nil {
				if errors.Is(err, ErrNotFound) {
					continue
				}
				return err
			}
			out = append(out, g)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: lookup groups by %s: %w", idx, err)
	}
	return out, nil
}

// ScanGroups calls fn for every group of tenant t in id order, with members
// when withMembers is set, inside one read transaction. ErrStop ends the
// scan without error.
func (s *Store) ScanGroups(ctx context.Context, t string, withMembers bool, fn func(*Group) error) error {
	err := s.viewTenant(ctx, t, func(tb *bolt.Bucket) error {
		c := tb.Bucket(bucketGroups).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			var g Group
			if err := json.Unmarshal(v, &g); err != nil {
				return fmt.Errorf("decode group %q: %w", k, err)
			}
			if withMembers {
				g.Members = members(tb, g.ID)
			}
			if err := fn(&g); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, ErrStop) {
		return fmt.Errorf("store: scan groups: %w", err)
	}
	return nil
}
