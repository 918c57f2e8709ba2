package store

import (
	"encoding/binary"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Every write transaction records what it changes, bucket by bucket, in a
// redo log: the payload of one write-ahead log record (see wal.go). The
// write methods reach bbolt only through wtx and bucket, which do the
// recording, so nothing can change the database without being logged.

// Redo operations. A record is a sequence of
//
//	op byte | depth uvarint | depth × (len uvarint, bucket name) | len uvarint, key | [len uvarint, value]
//
// where the path names the bucket from the root, the key is the bucket's
// own name for the bucket operations, and only opPut carries a value.
const (
	opPut byte = 1 + iota
	opDelete
	opCreateBucket
	opDeleteBucket
)

// redo accumulates one transaction's operations.
type redo struct {
	buf     []byte
	stamped []string // tenants whose version stamp the transaction wrote
}

// reset empties r for the next transaction (or attempt of one).
func (r *redo) reset() {
	r.buf, r.stamped = r.buf[:0], r.stamped[:0]
}

func (r *redo) add(op byte, path [][]byte, key, value []byte) {
	r.buf = append(r.buf, op)
	r.buf = binary.AppendUvarint(r.buf, uint64(len(path)))
	for _, p := range path {
		r.buf = binary.AppendUvarint(r.buf, uint64(len(p)))
		r.buf = append(r.buf, p...)
	}
	r.buf = binary.AppendUvarint(r.buf, uint64(len(key)))
	r.buf = append(r.buf, key...)
	if op == opPut {
		r.buf = binary.AppendUvarint(r.buf, uint64(len(value)))
		r.buf = append(r.buf, value...)
	}
}

// wtx is a write transaction whose changes are recorded.
type wtx struct {
	tx  *bolt.Tx
	log *redo
}

// ID is the bbolt transaction id.
func (w wtx) ID() int { return w.tx.ID() }

// Bucket returns the top-level bucket name; exists reports false if there
// is none.
func (w wtx) Bucket(name []byte) bucket {
	return bucket{b: w.tx.Bucket(name), path: [][]byte{name}, log: w.log}
}

// bucket is a bucket of a write transaction. Its writes are recorded; its
// reads go straight to bbolt (raw gives the bucket for read-only helpers).
type bucket struct {
	b    *bolt.Bucket
	path [][]byte // bucket names from the root, this one last
	log  *redo
}

func (b bucket) exists() bool          { return b.b != nil }
func (b bucket) raw() *bolt.Bucket     { return b.b }
func (b bucket) Get(key []byte) []byte { return b.b.Get(key) }
func (b bucket) Cursor() *bolt.Cursor  { return b.b.Cursor() } // for reading only
func (b bucket) child(name []byte) [][]byte {
	return append(b.path[:len(b.path):len(b.path)], name)
}

// Bucket returns the nested bucket name; exists reports false if there is
// none.
func (b bucket) Bucket(name []byte) bucket {
	return bucket{b: b.b.Bucket(name), path: b.child(name), log: b.log}
}

func (b bucket) Put(key, value []byte) error {
	if err := b.b.Put(key, value); err != nil {
		return err
	}
	b.log.add(opPut, b.path, key, value)
	return nil
}

func (b bucket) Delete(key []byte) error {
	if err := b.b.Delete(key); err != nil {
		return err
	}
	b.log.add(opDelete, b.path, key, nil)
	return nil
}

func (b bucket) CreateBucket(name []byte) (bucket, error) {
	nb, err := b.b.CreateBucket(name)
	if err != nil {
		return bucket{}, err
	}
	b.log.add(opCreateBucket, b.path, name, nil)
	return bucket{b: nb, path: b.child(name), log: b.log}, nil
}

func (b bucket) CreateBucketIfNotExists(name []byte) (bucket, error) {
	if c := b.Bucket(name); c.exists() {
		return c, nil
	}
	return b.CreateBucket(name)
}

func (b bucket) DeleteBucket(name []byte) error {
	if err := b.b.DeleteBucket(name); err != nil {
		return err
	}
	b.log.add(opDeleteBucket, b.path, name, nil)
	return nil
}

// redoOp is one decoded operation; its slices point into the record.
type redoOp struct {
	op         byte
	path       [][]byte
	key, value []byte
}

var errBadRedo = errors.New("malformed redo record")

// decodeRedo calls fn for each operation of payload in order.
func decodeRedo(payload []byte, fn func(redoOp) error) error {
	p := payload
	next := func() ([]byte, bool) {
		n, k := binary.Uvarint(p)
		if k <= 0 || n > uint64(len(p)-k) {
			return nil, false
		}
		v := p[k : k+int(n) : k+int(n)]
		p = p[k+int(n):]
		return v, true
	}
	var path [][]byte
	for len(p) > 0 {
		o := redoOp{op: p[0]}
		p = p[1:]
		if o.op < opPut || o.op > opDeleteBucket {
			return fmt.Errorf("%w: unknown operation %d at byte %d", errBadRedo, o.op, len(payload)-len(p)-1)
		}
		depth, k := binary.Uvarint(p)
		if k <= 0 || depth == 0 || depth > uint64(len(p)) {
			return fmt.Errorf("%w: bad bucket path at byte %d", errBadRedo, len(payload)-len(p))
		}
		p = p[k:]
		path = path[:0]
		for range depth {
			name, ok := next()
			if !ok {
				return fmt.Errorf("%w: truncated bucket name at byte %d", errBadRedo, len(payload)-len(p))
			}
			path = append(path, name)
		}
		o.path = path
		var ok bool
		if o.key, ok = next(); !ok {
			return fmt.Errorf("%w: truncated key at byte %d", errBadRedo, len(payload)-len(p))
		}
		if o.op == opPut {
			if o.value, ok = next(); !ok {
				return fmt.Errorf("%w: truncated value at byte %d", errBadRedo, len(payload)-len(p))
			}
		}
		if err := fn(o); err != nil {
			return err
		}
	}
	return nil
}

// applyRedo replays payload's operations in tx.
func applyRedo(tx *bolt.Tx, payload []byte) error {
	return decodeRedo(payload, func(o redoOp) error {
		b := tx.Bucket(o.path[0])
		for _, name := range o.path[1:] {
			if b == nil {
				break
			}
			b = b.Bucket(name)
		}
		if b == nil {
			return fmt.Errorf("%w: no bucket %q", errBadRedo, o.path)
		}
		var err error
		switch o.op {
		case opPut:
			err = b.Put(o.key, o.value)
		case opDelete:
			err = b.Delete(o.key)
		case opCreateBucket:
			_, err = b.CreateBucket(o.key)
		case opDeleteBucket:
			err = b.DeleteBucket(o.key)
		}
		if err != nil {
			return fmt.Errorf("replay %q in %q: %w", o.key, o.path, err)
		}
		return nil
	})
}
