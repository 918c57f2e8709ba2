package scim

import (
	"net/http"
	"strings"

	"github.com/scimldap/scimldap/mapping"
)

// The discovery documents (RFC 7644 §4) describe what this server really
// does: PATCH, filter, sort and ETags are supported; bulk, password change
// and the /Me endpoint are not.

func (h *Handler) serviceProviderConfig(w http.ResponseWriter, r *http.Request, t *tenantCtx) error {
	writeJSON(w, http.StatusOK, map[string]any{
		"schemas":          []string{"urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"},
		"documentationUri": "https://" + r.Host + "/scim/v2/" + t.name + "/Schemas",
		"patch":            map[string]any{"supported": true},
		"bulk":             map[string]any{"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
		"filter":           map[string]any{"supported": true, "maxResults": h.cfg.MaxResults},
		"changePassword":   map[string]any{"supported": false},
		"sort":             map[string]any{"supported": true},
		"etag":             map[string]any{"supported": true},
		"authenticationSchemes": []any{map[string]any{
			"type":        "oauthbearertoken",
			"name":        "Bearer token",
			"description": "The tenant's Secret Token, sent as Authorization: Bearer <token>.",
			"primary":     true,
		}},
		"meta": map[string]any{"resourceType": "ServiceProviderConfig", "location": t.links.Base + "/ServiceProviderConfig"},
	})
	return nil
}

func schemaDoc(s *mapping.Schema, t *tenantCtx, common bool) map[string]any {
	attrs := s.Attributes
	if common {
		attrs = append([]mapping.Attribute{*mapping.CommonAttr("externalId")}, attrs...)
	}
	return map[string]any{
		"schemas":     []string{"urn:ietf:params:scim:schemas:core:2.0:Schema"},
		"id":          s.ID,
		"name":        s.Name,
		"description": s.Description,
		"attributes":  attrs,
		"meta":        map[string]any{"resourceType": "Schema", "location": t.links.Base + "/Schemas/" + s.ID},
	}
}

func allSchemas(t *tenantCtx) []map[string]any {
	return []map[string]any{
		schemaDoc(&mapping.UserSchema, t, true),
		schemaDoc(&mapping.EnterpriseSchema, t, false),
		schemaDoc(&mapping.GroupSchema, t, true),
	}
}

func (h *Handler) schemas(w http.ResponseWriter, r *http.Request, t *tenantCtx) error {
	all := allSchemas(t)
	writeJSON(w, http.StatusOK, listResponse(all, len(all), 1))
	return nil
}

func (h *Handler) schema(w http.ResponseWriter, r *http.Request, t *tenantCtx) error {
	id := r.PathValue("id")
	for _, s := range allSchemas(t) {
		if strings.EqualFold(s["id"].(string), id) {
			writeJSON(w, http.StatusOK, s)
			return nil
		}
	}
	return errorf(http.StatusNotFound, "", "schema %q is not served here", id)
}

func resourceTypeDocs(t *tenantCtx) []map[string]any {
	return []map[string]any{
		{
			"schemas":          []string{"urn:ietf:params:scim:schemas:core:2.0:ResourceType"},
			"id":               "User",
			"name":             "User",
			"endpoint":         "/Users",
			"description":      "User Account",
			"schema":           mapping.SchemaUser,
			"schemaExtensions": []any{map[string]any{"schema": mapping.SchemaEnterprise, "required": false}},
			"meta":             map[string]any{"resourceType": "ResourceType", "location": t.links.Base + "/ResourceTypes/User"},
		},
		{
			"schemas":     []string{"urn:ietf:params:scim:schemas:core:2.0:ResourceType"},
			"id":          "Group",
			"name":        "Group",
			"endpoint":    "/Groups",
			"description": "Group",
			"schema":      mapping.SchemaGroup,
			"meta":        map[string]any{"resourceType": "ResourceType", "location": t.links.Base + "/ResourceTypes/Group"},
		},
	}
}

func (h *Handler) resourceTypes(w http.ResponseWriter, r *http.Request, t *tenantCtx) error {
	all := resourceTypeDocs(t)
	writeJSON(w, http.StatusOK, listResponse(all, len(all), 1))
	return nil
}

func (h *Handler) resourceType(w http.ResponseWriter, r *http.Request, t *tenantCtx) error {
	id := r.PathValue("id")
	for _, d := range resourceTypeDocs(t) {
		if strings.EqualFold(d["id"].(string), id) {
			writeJSON(w, http.StatusOK, d)
			return nil
		}
	}
	return errorf(http.StatusNotFound, "", "resource type %q is not served here", id)
}
