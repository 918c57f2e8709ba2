package store

import (
	"bytes"
	"fmt"
	"strings"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// Index names an attribute the store indexes, so that matching queries (the
// ones Entra sends before every create) and uniqueness checks never scan.
type Index string

// The indexes. Values are normalised before they are stored and looked up:
// case-folded where SCIM compares case-insensitively, digits-only for phone
// numbers.
const (
	IndexUserName       Index = "username"       // User userName, case-insensitive, always unique
	IndexExternalID     Index = "externalid"     // User externalId, exact
	IndexEmail          Index = "email"          // every User emails[].value, case-insensitive
	IndexPhone          Index = "phone"          // every User phoneNumbers[].value, normalised
	IndexDisplayName    Index = "displayname"    // User displayName, case-insensitive
	IndexEmployeeNumber Index = "employeenumber" // enterprise employeeNumber, exact
	IndexGroupName      Index = "groupname"      // Group displayName, case-insensitive, always unique
	IndexGroupExternal  Index = "groupexternal"  // Group externalId, exact
)

// Rules are a tenant's optional uniqueness rules beyond the fixed ones
// (userName and group displayName are always unique).
type Rules struct {
	UniqueExternalID bool // no two users share an externalId
	UniqueEmail      bool // no two users share an email address
	UniquePhone      bool // no two users share a phone number (normalised)
}

// SetRules sets the uniqueness rules of tenant t (any case). They apply to
// writes from now on; existing data is not re-checked.
func (s *Store) SetRules(t string, r Rules) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rules[strings.ToLower(t)] = r
}

func (s *Store) rulesFor(t string) Rules {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.rules[strings.ToLower(t)]
}

// maxIndexed bounds an indexed value; bbolt keys must stay small and no
// real userName, email or phone number comes near it.
const maxIndexed = 1024

type userIndex struct {
	index  Index
	attr   string // SCIM attribute path named in conflict errors
	values func(u *User) []string
	unique func(r Rules) bool
}

var userIndexes = []userIndex{
	{IndexUserName, "userName", func(u *User) []string { return one(strings.ToLower(u.UserName)) }, func(Rules) bool { return true }},
	{IndexExternalID, "externalId", func(u *User) []string { return one(u.ExternalID) }, func(r Rules) bool { return r.UniqueExternalID }},
	{IndexEmail, "emails.value", func(u *User) []string {
		return each(u.Emails, func(v MultiValue) string { return strings.ToLower(v.Value) })
	}, func(r Rules) bool { return r.UniqueEmail }},
	{IndexPhone, "phoneNumbers.value", func(u *User) []string {
		return each(u.PhoneNumbers, func(v MultiValue) string { return NormalizePhone(v.Value) })
	}, func(r Rules) bool { return r.UniquePhone }},
	{IndexDisplayName, "displayName", func(u *User) []string { return one(strings.ToLower(u.DisplayName)) }, func(Rules) bool { return false }},
	{IndexEmployeeNumber, "employeeNumber", func(u *User) []string { return one(u.Enterprise.EmployeeNumber) }, func(Rules) bool { return false }},
}

type groupIndex struct {
	index  Index
	attr   string
	value  func(g *Group) string
	unique func(r Rules) bool
}

var groupIndexes = []groupIndex{
	{IndexGroupName, "displayName", func(g *Group) string { return strings.ToLower(g.DisplayName) }, func(Rules) bool { return true }},
	{IndexGroupExternal, "externalId", func(g *Group) string { return g.ExternalID }, func(Rules) bool { return false }},
}

// NormalizeIndexValue normalises v the way values of idx are stored, so a
// lookup finds what a write indexed.
func NormalizeIndexValue(idx Index, v string) string {
	switch idx {
	case IndexUserName, IndexEmail, IndexDisplayName, IndexGroupName:
		return strings.ToLower(v)
	case IndexPhone:
		return NormalizePhone(v)
	}
	return v
}

func one(v string) []string {
	if v == "" {
		return nil
	}
	return []string{v}
}

func each(vs []MultiValue, f func(MultiValue) string) []string {
	var out []string
	seen := map[string]bool{}
	for _, v := range vs {
		n := f(v)
		if n != "" && !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out
}

// keyBufs recycles index keys on the write path.
var keyBufs = sync.Pool{New: func() any { b := make([]byte, 0, 128); return &b }}

func indexKey(buf []byte, value, id string) []byte {
	buf = append(buf[:0], value...)
	buf = append(buf, 0)
	return append(buf, id...)
}

// idsFor returns the ids indexed under value.
func idsFor(b *bolt.Bucket, value string) []string {
	prefix := append([]byte(value), 0)
	var ids []string
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		ids = append(ids, string(k[len(prefix):]))
	}
	return ids
}

// holder returns an id other than self indexed under value, or "".
func holder(b *bolt.Bucket, value, self string) string {
	for _, id := range idsFor(b, value) {
		if id != self {
			return id
		}
	}
	return ""
}

func indexBucket(tb bucket, idx Index) (bucket, error) {
	return tb.Bucket(bucketIndexes).CreateBucketIfNotExists([]byte(idx))
}

func checkIndexable(attr, v string) error {
	if len(v) > maxIndexed {
		return fmt.Errorf("%s is %d bytes long; at most %d are accepted: %w", attr, len(v), maxIndexed, ErrInvalid)
	}
	if strings.IndexByte(v, 0) >= 0 {
		return fmt.Errorf("%s contains a NUL character: %w", attr, ErrInvalid)
	}
	return nil
}

// indexedValues returns u's values for each of userIndexes, in order.
func indexedValues(u *User) [][]string {
	out := make([][]string, len(userIndexes))
	for i, ix := range userIndexes {
		out[i] = ix.values(u)
	}
	return out
}

// indexUser checks uniqueness of u's indexed values against other records,
// removes the entries of the values indexed before and adds the new ones.
// Both come from indexedValues, computed before the write transaction so
// that the single committer does not: vals are user id's values now, old
// those it had (nil for a new user).
func indexUser(tb bucket, id string, vals, old [][]string, rules Rules) error {
	kp := keyBufs.Get().(*[]byte)
	defer keyBufs.Put(kp)
	for i, ix := range userIndexes {
		vals := vals[i]
		if old != nil && equalStrings(vals, old[i]) {
			continue // unchanged: nothing to check or rewrite
		}
		b, err := indexBucket(tb, ix.index)
		if err != nil {
			return err
		}
		for _, v := range vals {
			if err := checkIndexable(ix.attr, v); err != nil {
				return err
			}
			if ix.unique(rules) {
				if h := holder(b.raw(), v, id); h != "" {
					return &ConflictError{Attribute: ix.attr, Value: v, HolderID: h}
				}
			}
		}
		if old != nil {
			for _, v := range old[i] {
				if err := b.Delete(indexKey(*kp, v, id)); err != nil {
					return err
				}
			}
		}
		for _, v := range vals {
			*kp = indexKey(*kp, v, id)
			if err := b.Put(*kp, nil); err != nil {
				return err
			}
		}
	}
	return nil
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func unindexUser(tb bucket, u *User) error {
	for _, ix := range userIndexes {
		b, err := indexBucket(tb, ix.index)
		if err != nil {
			return err
		}
		for _, v := range ix.values(u) {
			if err := b.Delete(indexKey(nil, v, u.ID)); err != nil {
				return err
			}
		}
	}
	return nil
}

func indexGroup(tb bucket, g, old *Group, rules Rules) error {
	for _, ix := range groupIndexes {
		v := ix.value(g)
		if old != nil && ix.value(old) == v {
			continue // unchanged: nothing to check or rewrite
		}
		b, err := indexBucket(tb, ix.index)
		if err != nil {
			return err
		}
		if v != "" {
			if err := checkIndexable(ix.attr, v); err != nil {
				return err
			}
			if ix.unique(rules) {
				if h := holder(b.raw(), v, g.ID); h != "" {
					return &ConflictError{Attribute: ix.attr, Value: v, HolderID: h}
				}
			}
		}
		if old != nil {
			if ov := ix.value(old); ov != "" {
				if err := b.Delete(indexKey(nil, ov, old.ID)); err != nil {
					return err
				}
			}
		}
		if v != "" {
			if err := b.Put(indexKey(nil, v, g.ID), nil); err != nil {
				return err
			}
		}
	}
	return nil
}

func unindexGroup(tb bucket, g *Group) error {
	for _, ix := range groupIndexes {
		b, err := indexBucket(tb, ix.index)
		if err != nil {
			return err
		}
		if v := ix.value(g); v != "" {
			if err := b.Delete(indexKey(nil, v, g.ID)); err != nil {
				return err
			}
		}
	}
	return nil
}
