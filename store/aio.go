package store

import (
	"fmt"
	"syscall"
	"time"
	"unsafe"
)

// Log syncs through Linux AIO: io_submit with IOCB_CMD_FDSYNC runs an
// fdatasync of the file in the kernel (Linux 4.18 and later), and
// io_getevents waits for it with a timeout, which a plain fdatasync
// cannot have. That timeout is what lets the committer keep its P while
// it waits without risking a stall of the whole process (see wal.sync).

// aioContext is a kernel AIO context with room for one request in flight.
type aioContext uintptr

// iocb is the kernel's struct iocb (linux/aio_abi.h); the blank fields,
// all zero here, are in order aio_data, aio_key and aio_rw_flags (whose
// order depends on the byte order), aio_reqprio, and after aio_fildes
// aio_buf, aio_nbytes, aio_offset, aio_reserved2, aio_flags and
// aio_resfd.
type iocb struct {
	_      uint64
	_      uint32
	_      uint32
	opcode uint16
	_      int16
	fildes uint32
	_      uint64
	_      uint64
	_      int64
	_      uint64
	_      uint32
	_      uint32
}

// ioEvent is the kernel's struct io_event: data, obj, res and res2.
type ioEvent struct {
	_, _ uint64
	res  int64
	_    int64
}

const iocbCmdFdsync = 3

// The ABI's sizes, checked at build: 64 and 32 bytes.
var (
	_ [64 - unsafe.Sizeof(iocb{})]struct{}
	_ [unsafe.Sizeof(iocb{}) - 64]struct{}
	_ [32 - unsafe.Sizeof(ioEvent{})]struct{}
	_ [unsafe.Sizeof(ioEvent{}) - 32]struct{}
)

// newAIO sets up a context. It fails where AIO is not available: an old
// kernel, a seccomp filter, or the system's aio-max-nr reached.
func newAIO() (aioContext, error) {
	var ctx aioContext
	if _, _, e := syscall.Syscall(syscall.SYS_IO_SETUP, 1, uintptr(unsafe.Pointer(&ctx)), 0); e != 0 {
		return 0, fmt.Errorf("io_setup: %w", e)
	}
	return ctx, nil
}

// submitFdsync starts an fdatasync of fd. Filesystems without
// asynchronous fsync refuse it here (EINVAL).
func (c aioContext) submitFdsync(fd uintptr) error {
	cbs := [1]*iocb{{opcode: iocbCmdFdsync, fildes: uint32(fd)}}
	for {
		n, _, e := syscall.Syscall(syscall.SYS_IO_SUBMIT, uintptr(c), 1, uintptr(unsafe.Pointer(&cbs[0])))
		switch {
		case e == syscall.EINTR:
			continue
		case e != 0:
			return fmt.Errorf("io_submit: %w", e)
		case n != 1:
			return fmt.Errorf("io_submit took %d of 1 requests", n)
		}
		return nil
	}
}

// wait waits for the request in flight and returns its result. With a
// positive keepP it first waits up to that long keeping the goroutine's P
// (RawSyscall), then, if the request is still running, the ordinary way,
// which hands the P to other goroutines.
func (c aioContext) wait(keepP time.Duration) error {
	var ev ioEvent
	if keepP > 0 {
		deadline := time.Now().Add(keepP)
		for {
			left := time.Until(deadline)
			if left <= 0 {
				break
			}
			ts := syscall.NsecToTimespec(int64(left))
			n, _, e := syscall.RawSyscall6(syscall.SYS_IO_GETEVENTS, uintptr(c), 1, 1, uintptr(unsafe.Pointer(&ev)), uintptr(unsafe.Pointer(&ts)), 0)
			if e == syscall.EINTR || e == 0 && n == 0 {
				continue // interrupted, or timed out: the loop checks the deadline
			}
			return event(n, e, &ev)
		}
	}
	for {
		n, _, e := syscall.Syscall6(syscall.SYS_IO_GETEVENTS, uintptr(c), 1, 1, uintptr(unsafe.Pointer(&ev)), 0, 0)
		if e == syscall.EINTR {
			continue
		}
		return event(n, e, &ev)
	}
}

// event turns io_getevents' outcome into the request's result.
func event(n uintptr, e syscall.Errno, ev *ioEvent) error {
	switch {
	case e != 0:
		return fmt.Errorf("io_getevents: %w", e)
	case n != 1:
		return fmt.Errorf("io_getevents returned %d events, want 1", n)
	case ev.res < 0:
		return syscall.Errno(-ev.res)
	}
	return nil
}

// destroy releases the context; no request may be in flight.
func (c aioContext) destroy() {
	syscall.Syscall(syscall.SYS_IO_DESTROY, uintptr(c), 0, 0)
}
