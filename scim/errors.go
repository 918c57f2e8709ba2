package scim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/scimldap/scimldap/mapping"
	"github.com/scimldap/scimldap/store"
)

const schemaError = "urn:ietf:params:scim:api:messages:2.0:Error"

// Error is an RFC 7644 §3.12 error response.
type Error struct {
	Status   int
	ScimType string // "" where RFC 7644 defines none for the status
	Detail   string
}

func (e *Error) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.ScimType, e.Detail) }

func errorf(status int, scimType, format string, args ...any) *Error {
	return &Error{Status: status, ScimType: scimType, Detail: fmt.Sprintf(format, args...)}
}

// writeError answers with the SCIM error for err. Errors it does not
// recognise are logged in full and answered with a generic 500 that never
// leaks internals.
func (h *Handler) writeError(w http.ResponseWriter, r *http.Request, err error) {
	e := h.toError(err)
	if e.Status >= 500 {
		h.log.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	body := map[string]any{
		"schemas": []string{schemaError},
		"status":  strconv.Itoa(e.Status),
		"detail":  e.Detail,
	}
	if e.ScimType != "" {
		body["scimType"] = e.ScimType
	}
	if e.Status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="scimldap", error="invalid_token"`)
	}
	writeJSON(w, e.Status, body)
}

// toError maps an error from any layer to the SCIM error a client sees. It
// is the one place where store and mapping errors meet HTTP.
func (h *Handler) toError(err error) *Error {
	var e *Error
	var ce *store.ConflictError
	var pe *PatchError
	var fe *FilterError
	var ve *mapping.ValueError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &e):
		return e
	case errors.As(err, &mbe):
		return errorf(http.StatusRequestEntityTooLarge, "", "the request body is larger than %d bytes", mbe.Limit)
	case errors.As(err, &ce):
		return errorf(http.StatusConflict, "uniqueness", "%s %q is already used by resource %s", ce.Attribute, ce.Value, ce.HolderID)
	case errors.As(err, &pe):
		detail := pe.Detail
		if pe.Index >= 0 {
			detail = fmt.Sprintf("Operations[%d]: %s", pe.Index, pe.Detail)
		}
		return errorf(http.StatusBadRequest, pe.ScimType, "%s", detail)
	case errors.As(err, &fe):
		return errorf(http.StatusBadRequest, "invalidFilter", "invalid filter %s", fe.Error())
	case errors.As(err, &ve):
		return errorf(http.StatusBadRequest, "invalidValue", "%s", ve.Error())
	case errors.Is(err, store.ErrPrecondition):
		return errorf(http.StatusPreconditionFailed, "", "the resource has changed: its current ETag does not match If-Match")
	case errors.Is(err, store.ErrInvalid):
		return errorf(http.StatusBadRequest, "invalidValue", "%s", invalidDetail(err))
	case errors.Is(err, store.ErrNotFound):
		return errorf(http.StatusNotFound, "", "resource not found")
	case errors.Is(err, store.ErrUnavailable), errors.Is(err, store.ErrClosed):
		h.log.Error("write refused", "err", err)
		return errorf(http.StatusServiceUnavailable, "", "the appliance cannot store writes until it is restarted; its log says why")
	case errors.Is(err, context.DeadlineExceeded):
		return errorf(http.StatusServiceUnavailable, "", "the request took too long; retry it")
	case errors.Is(err, context.Canceled):
		return errorf(http.StatusServiceUnavailable, "", "the request was cancelled")
	}
	return errorf(http.StatusInternalServerError, "", "internal error; the appliance log has the details")
}

// invalidDetail returns the message of the innermost error wrapping
// store.ErrInvalid: it describes the client's input and is safe to show.
func invalidDetail(err error) string {
	for e := err; e != nil; e = errors.Unwrap(e) {
		if errors.Unwrap(e) == store.ErrInvalid {
			return strings.TrimSuffix(e.Error(), ": "+store.ErrInvalid.Error())
		}
	}
	return err.Error()
}

// writeJSON writes v as the response body. HTML escaping is off so that
// values come back byte for byte as they were sent ("R&D", not "R\u0026D").
func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil { // only our own maps of strings reach here
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString(`{"schemas":["` + schemaError + `"],"status":"500","detail":"internal error"}`)
	}
	w.Header().Set("Content-Type", "application/scim+json; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}
