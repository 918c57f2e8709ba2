package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Tenant is one customer directory: its own users, groups, SCIM token and
// LDAP service accounts.
type Tenant struct {
	Name    string    `json:"name"` // lower case; 1-35 letters, digits and '-'
	Token   Secret    `json:"token"`
	Created time.Time `json:"created"`
}

// Account is an LDAP service account of a tenant.
type Account struct {
	Name     string    `json:"name"`
	Password Secret    `json:"password"`
	Created  time.Time `json:"created"`
}

// Secret is a salted SHA-256 hash of a generated secret. Secrets are 256
// random bits, so a fast hash is as strong as a slow one and keeps binds and
// SCIM requests cheap; only the hash is stored.
type Secret struct {
	Salt []byte `json:"salt"`
	Hash []byte `json:"hash"`
}

// NewSecret returns a fresh random secret (256 bits, URL-safe base64) and
// its hash for storage.
func NewSecret() (string, Secret) {
	var raw [32]byte
	rand.Read(raw[:])
	plain := base64.RawURLEncoding.EncodeToString(raw[:])
	return plain, HashSecret(plain)
}

// HashSecret hashes plain with a fresh salt.
func HashSecret(plain string) Secret {
	salt := make([]byte, 16)
	rand.Read(salt)
	return Secret{Salt: salt, Hash: hashWith(salt, plain)}
}

func hashWith(salt []byte, plain string) []byte {
	h := sha256.New()
	h.Write(salt)
	h.Write([]byte(plain))
	return h.Sum(nil)
}

// Verify reports whether plain is the secret, comparing in constant time.
func (s Secret) Verify(plain string) bool {
	if len(s.Hash) == 0 {
		return false
	}
	return subtle.ConstantTimeCompare(hashWith(s.Salt, plain), s.Hash) == 1
}

// ValidateTenantName returns an error (wrapping ErrInvalid) saying why name
// cannot name a tenant, or nil.
func ValidateTenantName(name string) error {
	if len(name) < 1 || len(name) > 35 {
		return fmt.Errorf("tenant name %q must be 1 to 35 characters long: %w", name, ErrInvalid)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
			return fmt.Errorf("tenant name %q may hold only letters, digits and '-': %w", name, ErrInvalid)
		}
	}
	return nil
}

// ValidateAccountName returns an error (wrapping ErrInvalid) saying why name
// cannot name a service account, or nil. The same rule as tenant names keeps
// bind DNs free of characters that need escaping.
func ValidateAccountName(name string) error {
	if err := ValidateTenantName(name); err != nil {
		return fmt.Errorf("account name %q must be 1 to 35 letters, digits and '-': %w", name, ErrInvalid)
	}
	return nil
}

// CreateTenant creates tenant name (stored lower case) with the given token
// hash. It returns ErrConflict if a tenant of that name, in any case, exists.
func (s *Store) CreateTenant(ctx context.Context, name string, token Secret) (Tenant, error) {
	defer s.writing()()
	if err := ValidateTenantName(name); err != nil {
		return Tenant{}, fmt.Errorf("store: create tenant: %w", err)
	}
	t := Tenant{Name: strings.ToLower(name), Token: token, Created: s.now().UTC()}
	err := s.update(ctx, func(w wtx) error {
		root := w.Bucket(bucketTenants)
		if root.Bucket([]byte(t.Name)).exists() {
			return &ConflictError{Attribute: "tenant", Value: t.Name, HolderID: t.Name}
		}
		b, err := root.CreateBucket([]byte(t.Name))
		if err != nil {
			return err
		}
		for _, name := range tenantBuckets {
			if _, err := b.CreateBucket(name); err != nil {
				return err
			}
		}
		if err := s.stamp(w, b); err != nil {
			return err
		}
		return putJSON(b, keyInfo, t)
	})
	s.forgetTenants()
	if err != nil {
		return Tenant{}, fmt.Errorf("store: create tenant %q: %w", t.Name, err)
	}
	s.notify(Change{Tenant: t.Name})
	return t, nil
}

// Tenant returns tenant name (any case), or ErrNotFound.
func (s *Store) Tenant(ctx context.Context, name string) (Tenant, error) {
	name = strings.ToLower(name)
	s.tmu.RLock()
	t, ok := s.tenants[name]
	s.tmu.RUnlock()
	if ok {
		return t, nil
	}
	err := s.viewTenant(ctx, name, func(b *bolt.Bucket) error {
		return getJSON(b, keyInfo, &t)
	})
	if err != nil {
		return Tenant{}, fmt.Errorf("store: tenant %q: %w", name, err)
	}
	s.tmu.Lock()
	if s.tenants == nil {
		s.tenants = map[string]Tenant{}
	}
	s.tenants[name] = t
	s.tmu.Unlock()
	return t, nil
}

// forgetTenants clears the tenant and account caches after a write to
// either, so a rotated token or password is refused from the next request.
func (s *Store) forgetTenants() {
	s.tmu.Lock()
	s.tenants = nil
	s.accounts = nil
	s.tmu.Unlock()
}

// Tenants lists every tenant in name order.
func (s *Store) Tenants(ctx context.Context) ([]Tenant, error) {
	var out []Tenant
	err := s.view(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTenants).ForEachBucket(func(k []byte) error {
			var t Tenant
			if err := getJSON(tx.Bucket(bucketTenants).Bucket(k), keyInfo, &t); err != nil {
				return err
			}
			out = append(out, t)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("store: list tenants: %w", err)
	}
	return out, nil
}

// DeleteTenant removes tenant name and everything it holds.
// Returns ErrNotFound if it does not exist.
func (s *Store) DeleteTenant(ctx context.Context, name string) error {
	defer s.writing()()
	name = strings.ToLower(name)
	err := s.update(ctx, func(w wtx) error {
		err := w.Bucket(bucketTenants).DeleteBucket([]byte(name))
		if errors.Is(err, berrors.ErrBucketNotFound) {
			return fmt.Errorf("tenant %q: %w", name, ErrNotFound)
		}
		return err
	})
	s.forgetTenants()
	if err != nil {
		return fmt.Errorf("store: delete tenant: %w", err)
	}
	s.notify(Change{Tenant: name})
	return nil
}

// SetTenantToken replaces tenant name's SCIM token hash; the old token stops
// working when this returns. Returns ErrNotFound if the tenant does not exist.
func (s *Store) SetTenantToken(ctx context.Context, name string, token Secret) error {
	defer s.writing()()
	name = strings.ToLower(name)
	err := s.update(ctx, func(w wtx) error {
		b, err := tenantBucketW(w, name)
		if err != nil {
			return err
		}
		var t Tenant
		if err := getJSON(b.raw(), keyInfo, &t); err != nil {
			return err
		}
		t.Token = token
		return putJSON(b, keyInfo, t)
	})
	s.forgetTenants()
	if err != nil {
		return fmt.Errorf("store: set token of tenant %q: %w", name, err)
	}
	return nil
}

// PutAccount creates or replaces service account a of tenant t.
// Returns ErrNotFound if the tenant does not exist.
func (s *Store) PutAccount(ctx context.Context, t string, a Account) error {
	defer s.writing()()
	if err := ValidateAccountName(a.Name); err != nil {
		return fmt.Errorf("store: put account: %w", err)
	}
	t, a.Name = strings.ToLower(t), strings.ToLower(a.Name)
	if a.Created.IsZero() {
		a.Created = s.now().UTC()
	}
	err := s.update(ctx, func(w wtx) error {
		b, err := tenantBucketW(w, t)
		if err != nil {
			return err
		}
		return putJSON(b.Bucket(bucketAccounts), []byte(a.Name), a)
	})
	s.forgetTenants()
	if err != nil {
		return fmt.Errorf("store: put account %q of tenant %q: %w", a.Name, t, err)
	}
	return nil
}

// Account returns service account name of tenant t, or ErrNotFound.
func (s *Store) Account(ctx context.Context, t, name string) (Account, error) {
	key := strings.ToLower(t) + "\x00" + strings.ToLower(name)
	s.tmu.RLock()
	a, ok := s.accounts[key]
	s.tmu.RUnlock()
	if ok {
		return a, nil
	}
	err := s.viewTenant(ctx, t, func(b *bolt.Bucket) error {
		v := b.Bucket(bucketAccounts).Get([]byte(strings.ToLower(name)))
		if v == nil {
			return fmt.Errorf("account %q: %w", name, ErrNotFound)
		}
		return json.Unmarshal(v, &a)
	})
	if err != nil {
		return Account{}, fmt.Errorf("store: account of tenant %q: %w", t, err)
	}
	s.tmu.Lock()
	if s.accounts == nil {
		s.accounts = map[string]Account{}
	}
	s.accounts[key] = a
	s.tmu.Unlock()
	return a, nil
}

// Accounts lists the service accounts of tenant t.
func (s *Store) Accounts(ctx context.Context, t string) ([]Account, error) {
	var out []Account
	err := s.viewTenant(ctx, t, func(b *bolt.Bucket) error {
		return b.Bucket(bucketAccounts).ForEach(func(_, v []byte) error {
			var a Account
			if err := json.Unmarshal(v, &a); err != nil {
				return err
			}
			out = append(out, a)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("store: accounts of tenant %q: %w", t, err)
	}
	return out, nil
}

// DeleteAccount removes service account name of tenant t.
// Returns ErrNotFound if either does not exist.
func (s *Store) DeleteAccount(ctx context.Context, t, name string) error {
	defer s.writing()()
	t, name = strings.ToLower(t), strings.ToLower(name)
	err := s.update(ctx, func(w wtx) error {
		b, err := tenantBucketW(w, t)
		if err != nil {
			return err
		}
		ab := b.Bucket(bucketAccounts)
		if ab.Get([]byte(name)) == nil {
			return fmt.Errorf("account %q: %w", name, ErrNotFound)
		}
		return ab.Delete([]byte(name))
	})
	s.forgetTenants()
	if err != nil {
		return fmt.Errorf("store: delete account of tenant %q: %w", t, err)
	}
	return nil
}

func putJSON(b bucket, k []byte, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(k, data)
}

func getJSON(b *bolt.Bucket, k []byte, v any) error {
	data := b.Get(k)
	if data == nil {
		return fmt.Errorf("record %q: %w", k, ErrNotFound)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode record %q: %w", k, err)
	}
	return nil
}
