package store

import (
	"encoding/binary"
	"fmt"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// The bucket layout. Tenant is outermost, so isolation between tenants is
// structural: every lookup starts from one tenant's bucket.
//
//	meta/                      schema_version → uint64 big-endian
//	tenants/<tenant>/info      → tenant JSON
//	                /stamp     → version of the last write to users or groups
//	                /accounts/ <name> → account JSON
//	                /users/    <id> → user JSON
//	                /groups/   <id> → group JSON
//	                /ix/<index>/ <value>\x00<id> → ""
//	                /members/  <groupID>\x00<memberID> → kind
//	                /memberof/ <memberID>\x00<groupID> → ""
var (
	bucketMeta     = []byte("meta")
	bucketTenants  = []byte("tenants")
	keySchema      = []byte("schema_version")
	keyStamp       = []byte("stamp")
	keyInfo        = []byte("info")
	bucketAccounts = []byte("accounts")
	bucketUsers    = []byte("users")
	bucketGroups   = []byte("groups")
	bucketIndexes  = []byte("ix")
	bucketMembers  = []byte("members")
	bucketMemberOf = []byte("memberof")
)

// tenantBuckets are created inside every tenant's bucket.
var tenantBuckets = [][]byte{bucketAccounts, bucketUsers, bucketGroups, bucketIndexes, bucketMembers, bucketMemberOf}

// migrations bring a database from version i to i+1. The schema version is
// len(migrations); each step and its version bump share one transaction.
var migrations = []func(*bolt.Tx) error{
	// 1: the initial layout.
	func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketTenants)
		return err
	},
}

// SchemaVersion is the layout version this binary writes.
var SchemaVersion = uint64(len(migrations))

func migrate(db *bolt.DB) error {
	// A current file is only read: opening it writes nothing, so its
	// version (see Store.Version) survives a restart.
	current := false
	err := db.View(func(tx *bolt.Tx) error {
		v, err := schemaVersion(tx.Bucket(bucketMeta))
		current = v == SchemaVersion
		return err
	})
	if err != nil || current {
		return err
	}
	for {
		done := false
		err := db.Update(func(tx *bolt.Tx) error {
			meta, err := tx.CreateBucketIfNotExists(bucketMeta)
			if err != nil {
				return err
			}
			v, err := schemaVersion(meta)
			if err != nil {
				return err
			}
			if v == SchemaVersion {
				done = true
				return nil
			}
			if err := migrations[v](tx); err != nil {
				return fmt.Errorf("migrate schema %d to %d: %w", v, v+1, err)
			}
			return meta.Put(keySchema, u64(v+1))
		})
		if err != nil {
			return err
		}
		if done {
			return nil
		}
	}
}

// schemaVersion reads the layout version from the meta bucket (nil: a new
// file, version 0) and refuses a version newer than this binary's.
func schemaVersion(meta *bolt.Bucket) (uint64, error) {
	var v uint64
	if meta != nil {
		if b := meta.Get(keySchema); b != nil {
			if len(b) != 8 {
				return 0, fmt.Errorf("schema version record is %d bytes, want 8: the file is not a scimldap database or is damaged", len(b))
			}
			v = binary.BigEndian.Uint64(b)
		}
	}
	if v > SchemaVersion {
		return v, fmt.Errorf("database schema version %d is newer than this binary's %d: run the newer scimldap or restore a backup", v, SchemaVersion)
	}
	return v, nil
}

// tenantBucket returns the bucket of tenant t (any case), or ErrNotFound.
func tenantBucket(tx *bolt.Tx, t string) (*bolt.Bucket, error) {
	b := tx.Bucket(bucketTenants).Bucket([]byte(strings.ToLower(t)))
	if b == nil {
		return nil, fmt.Errorf("tenant %q: %w", t, ErrNotFound)
	}
	return b, nil
}

// tenantBucketW is tenantBucket in a write transaction.
func tenantBucketW(w wtx, t string) (bucket, error) {
	b, err := tenantBucket(w.tx, t)
	if err != nil {
		return bucket{}, err
	}
	return bucket{b: b, path: [][]byte{bucketTenants, []byte(strings.ToLower(t))}, log: w.log}, nil
}
