package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"

	bolt "go.etcd.io/bbolt"
)

func validateUser(u *User) error {
	if strings.TrimSpace(u.UserName) == "" {
		return fmt.Errorf("userName is required and must not be blank: %w", ErrInvalid)
	}
	return nil
}

// CreateUser stores u as a new user of tenant t, assigning its id and meta,
// and returns the stored record. Returns a *ConflictError (ErrConflict) if
// a unique attribute is taken, ErrInvalid for an unusable record and
// ErrNotFound if the tenant does not exist.
func (s *Store) CreateUser(ctx context.Context, t string, u User) (User, error) {
	defer s.writing()()
	if err := validateUser(&u); err != nil {
		return User{}, fmt.Errorf("store: create user: %w", err)
	}
	now := s.now().UTC()
	u.ID = NewID()
	u.Meta = Meta{Created: now, LastModified: now, Version: 1}
	rules := s.rulesFor(t)
	data, err := json.Marshal(&u)
	if err != nil {
		return User{}, fmt.Errorf("store: create user: encode: %w", err)
	}
	indexed := indexedValues(&u)
	err = s.updateTenant(ctx, t, func(tb bucket) error {
		if err := indexUser(tb, u.ID, indexed, nil, rules); err != nil {
			return err
		}
		return tb.Bucket(bucketUsers).Put([]byte(u.ID), data)
	})
	if err != nil {
		return User{}, fmt.Errorf("store: create user %q: %w", u.UserName, err)
	}
	s.notify(Change{Tenant: t, Kind: KindUser, ID: u.ID})
	return u, nil
}

// User returns user id of tenant t, or ErrNotFound.
func (s *Store) User(ctx context.Context, t, id string) (User, error) {
	var u User
	err := s.viewTenant(ctx, t, func(tb *bolt.Bucket) error {
		return getUser(tb, id, &u)
	})
	if err != nil {
		return User{}, fmt.Errorf("store: user %q: %w", id, err)
	}
	return u, nil
}

func getUser(tb *bolt.Bucket, id string, u *User) error {
	data := tb.Bucket(bucketUsers).Get([]byte(id))
	if data == nil {
		return fmt.Errorf("user %q: %w", id, ErrNotFound)
	}
	if err := json.Unmarshal(data, u); err != nil {
		return fmt.Errorf("decode user %q: %w", id, err)
	}
	return nil
}

// UpdateUser applies fn to user id of tenant t and stores the result with
// a new version. If ifVersion is not zero and the stored version differs, it
// returns ErrPrecondition without calling fn. fn receives a private copy; it
// may run more than once and must depend only on its argument. An error from
// fn aborts the update and is returned wrapped. id, created and version are
// kept by the store whatever fn does.
//
// fn runs outside the write transaction, so the single committer only
// checks that the record is still the one fn saw and writes; if another
// writer got there first, fn runs again on the new state.
func (s *Store) UpdateUser(ctx context.Context, t, id string, ifVersion uint64, fn func(*User) error) (User, error) {
	defer s.writing()()
	rules := s.rulesFor(t)
	for {
		var before []byte
		err := s.viewTenant(ctx, t, func(tb *bolt.Bucket) error {
			data := tb.Bucket(bucketUsers).Get([]byte(id))
			if data == nil {
				return fmt.Errorf("user %q: %w", id, ErrNotFound)
			}
			before = append([]byte(nil), data...)
			return nil
		})
		if err != nil {
			return User{}, fmt.Errorf("store: update user %q: %w", id, err)
		}
		var u User
		if err := json.Unmarshal(before, &u); err != nil {
			return User{}, fmt.Errorf("store: update user %q: decode: %w", id, err)
		}
		if ifVersion != 0 && u.Meta.Version != ifVersion {
			return User{}, fmt.Errorf("store: update user %q: at version %d, not %d: %w", id, u.Meta.Version, ifVersion, ErrPrecondition)
		}
		old := u.Meta
		oldIndexed := indexedValues(&u) // fn gets u itself: it is private
		if err := fn(&u); err != nil {
			return User{}, fmt.Errorf("store: update user %q: %w", id, err)
		}
		if err := validateUser(&u); err != nil {
			return User{}, fmt.Errorf("store: update user %q: %w", id, err)
		}
		u.ID, u.Meta.Created = id, old.Created
		u.Meta.Version = old.Version + 1
		u.Meta.LastModified = s.now().UTC()
		data, err := json.Marshal(&u)
		if err != nil {
			return User{}, fmt.Errorf("store: update user %q: encode: %w", id, err)
		}
		indexed := indexedValues(&u)
		err = s.updateTenant(ctx, t, func(tb bucket) error {
			cur := tb.Bucket(bucketUsers).Get([]byte(id))
			if cur == nil {
				return fmt.Errorf("user %q: %w", id, ErrNotFound)
			}
			if !bytes.Equal(cur, before) {
				return errChanged
			}
			if err := indexUser(tb, id, indexed, oldIndexed, rules); err != nil {
				return err
			}
			return tb.Bucket(bucketUsers).Put([]byte(id), data)
		})
		if errors.Is(err, errChanged) {
			continue // another writer changed the record: run fn again
		}
		if err != nil {
			return User{}, fmt.Errorf("store: update user %q: %w", id, err)
		}
		s.notify(Change{Tenant: t, Kind: KindUser, ID: id})
		return u, nil
	}
}

// errChanged reports that a record changed between read and write.
var errChanged = errors.New("record changed concurrently")

// DeleteUser removes user id of tenant t and its group memberships.
// Returns ErrNotFound if it does not exist.
func (s *Store) DeleteUser(ctx context.Context, t, id string) error {
	defer s.writing()()
	var groups []string
	err := s.updateTenant(ctx, t, func(tb bucket) error {
		var u User
		if err := getUser(tb.raw(), id, &u); err != nil {
			return err
		}
		if err := unindexUser(tb, &u); err != nil {
			return err
		}
		var err error
		if groups, err = dropMemberships(tb, id, s.now().UTC()); err != nil {
			return err
		}
		return tb.Bucket(bucketUsers).Delete([]byte(id))
	})
	if err != nil {
		return fmt.Errorf("store: delete user %q: %w", id, err)
	}
	s.notify(Change{Tenant: t, Kind: KindUser, ID: id})
	for _, g := range groups {
		s.notify(Change{Tenant: t, Kind: KindGroup, ID: g})
	}
	return nil
}

// LookupUsers returns the users of tenant t whose idx attribute equals value
// (normalised as the index is). The answer comes from the index, not a scan.
func (s *Store) LookupUsers(ctx context.Context, t string, idx Index, value string) ([]User, error) {
	var out []User
	err := s.viewTenant(ctx, t, func(tb *bolt.Bucket) error {
		b := tb.Bucket(bucketIndexes).Bucket([]byte(idx))
		if b == nil {
			return nil
		}
		for _, id := range idsFor(b, NormalizeIndexValue(idx, value)) {
			var u User
			if err := getUser(tb, id, &u); err != nil {
				if errors.Is(err, ErrNotFound) {
					continue
				}
				return err
			}
			out = append(out, u)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: lookup users by %s: %w", idx, err)
	}
	return out, nil
}

// ScanUsers calls fn for every user of tenant t in id (creation) order,
// inside one read transaction, until fn returns an error. ErrStop ends the
// scan without error.
func (s *Store) ScanUsers(ctx context.Context, t string, fn func(*User) error) error {
	err := s.viewTenant(ctx, t, func(tb *bolt.Bucket) error {
		c := tb.Bucket(bucketUsers).Cursor()
		n := 0
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if n++; n%1024 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			var u User
			if err := json.Unmarshal(v, &u); err != nil {
				return fmt.Errorf("decode user %q: %w", k, err)
			}
			if err := fn(&u); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, ErrStop) {
		return fmt.Errorf("store: scan users: %w", err)
	}
	return nil
}

// CountUsers returns how many users tenant t holds.
func (s *Store) CountUsers(ctx context.Context, t string) (int, error) {
	n := 0
	err := s.viewTenant(ctx, t, func(tb *bolt.Bucket) error {
		n = tb.Bucket(bucketUsers).Stats().KeyN
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("store: count users: %w", err)
	}
	return n, nil
}

// ErrStop ends a scan early without an error.
var ErrStop = errors.New("stop")

// ScanUsersConcurrently calls fn for every user of tenant t from n
// goroutines at once, in no defined order, decoding records in parallel.
// It reads one consistent snapshot. fn must be safe for concurrent use; the
// first error it returns ends the scan and is returned.
func (s *Store) ScanUsersConcurrently(ctx context.Context, t string, n int, fn func(*User) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches := make(chan [][]byte, 2*n)
	errc := make(chan error, n+1)
	var wg sync.WaitGroup
	for w := 0; w < n; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for batch := range batches {
				for _, raw := range batch {
					var u User
					err := json.Unmarshal(raw, &u)
					if err == nil {
						err = fn(&u)
					}
					if err != nil {
						errc <- err
						cancel()
						for range batches { // drain so the reader can finish
						}
						return
					}
				}
			}
		}()
	}
	err := s.view(ctx, func(tx *bolt.Tx) error {
		defer close(batches)
		tb, err := tenantBucket(tx, t)
		if err != nil {
			return err
		}
		batch := make([][]byte, 0, 256)
		c := tb.Bucket(bucketUsers).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			batch = append(batch, append([]byte(nil), v...)) // bolt bytes die with the tx
			if len(batch) == cap(batch) {
				select {
				case batches <- batch:
				case <-ctx.Done():
					return ctx.Err()
				}
				batch = make([][]byte, 0, 256)
			}
		}
		if len(batch) > 0 {
			batches <- batch
		}
		return nil
	})
	wg.Wait()
	select {
	case werr := <-errc:
		return fmt.Errorf("store: scan users: %w", werr)
	default:
	}
	if err != nil {
		return fmt.Errorf("store: scan users: %w", err)
	}
	return nil
}
