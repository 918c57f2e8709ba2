package mapping

import (
	"fmt"
	"strconv"
	"strings"
)

// Custom fields ride in externalId, the way UC suites fed by Entra ID
// expect: Entra's attribute mapping writes an expression such as
//
//	Join("$$$", "ImagicleCustomFields", Append("Custom1=", [city]), Append("Custom2=", [jobTitle]))
//
// which arrives as "ImagicleCustomFields$$$Custom1=Rome$$$Custom2=R&D Manager"
// and becomes the LDAP attributes custom1, custom2, … A field missing from
// the expression is cleared, and so is one sent empty.

const (
	customSeparator = "$$$"
	// MaxCustomFieldLen bounds one custom field value.
	MaxCustomFieldLen = 256
	// MaxCustomFields is the highest custom field number accepted.
	MaxCustomFields = 10
)

// ParseCustomFields reads a custom-field expression from externalID. ok is
// false when externalID is not one (no "$$$" and no CustomN= part): it is
// then an ordinary externalId. err says which part is wrong when it looks
// like an expression but is malformed, so a SCIM write can be refused with
// an actionable message.
func ParseCustomFields(externalID string) (fields map[int]string, ok bool, err error) {
	if !strings.Contains(externalID, customSeparator) && !isCustomPart(externalID) {
		return nil, false, nil
	}
	fields = map[int]string{}
	for i, part := range strings.Split(externalID, customSeparator) {
		if i == 0 && !strings.Contains(part, "=") {
			continue // a marker such as "ImagicleCustomFields"
		}
		name, value, found := strings.Cut(part, "=")
		if !found {
			return nil, true, fmt.Errorf("custom field part %d %q has no \"=\": each part must look like Custom1=value", i+1, clip(part))
		}
		if len(name) < 7 || !strings.EqualFold(name[:6], "custom") {
			return nil, true, fmt.Errorf("custom field part %d names %q: names must be Custom1 to Custom%d", i+1, clip(name), MaxCustomFields)
		}
		n, err := strconv.Atoi(name[6:])
		if err != nil || n < 1 || n > MaxCustomFields {
			return nil, true, fmt.Errorf("custom field part %d names %q: names must be Custom1 to Custom%d", i+1, clip(name), MaxCustomFields)
		}
		if _, dup := fields[n]; dup {
			return nil, true, fmt.Errorf("custom field Custom%d appears twice", n)
		}
		if len(value) > MaxCustomFieldLen {
			return nil, true, fmt.Errorf("custom field Custom%d is %d characters long; at most %d are accepted", n, len(value), MaxCustomFieldLen)
		}
		fields[n] = value
	}
	return fields, true, nil
}

func isCustomPart(s string) bool {
	name, _, found := strings.Cut(s, "=")
	return found && len(name) > 6 && strings.EqualFold(name[:6], "custom")
}

func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
