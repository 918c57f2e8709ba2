package ldap

import (
	"encoding/hex"
	"fmt"
	"strings"
	"unicode/utf8"
)

// rdn is one attribute=value pair of a DN (multi-valued RDNs are kept as
// their first pair for matching; none are served here).
type rdn struct {
	attr  string // lower case
	value string // unescaped
}

// parseDN parses an RFC 4514 distinguished name. The empty string is the
// root DSE (no RDNs).
func parseDN(s string) ([]rdn, error) {
	s = trimDNSpaces(s)
	if s == "" {
		return nil, nil
	}
	if len(s) > 4096 {
		return nil, fmt.Errorf("DN longer than 4096 bytes")
	}
	if !utf8.ValidString(s) {
		return nil, fmt.Errorf("DN is not valid UTF-8")
	}
	var out []rdn
	i := 0
	for {
		// attribute type
		start := i
		for i < len(s) && s[i] != '=' && s[i] != ',' && s[i] != '+' {
			i++
		}
		if i >= len(s) || s[i] != '=' {
			return nil, fmt.Errorf("at position %d: expected attribute=value", start)
		}
		attr := strings.ToLower(strings.TrimSpace(s[start:i]))
		if attr == "" {
			return nil, fmt.Errorf("at position %d: empty attribute type", start)
		}
		i++ // '='
		for i < len(s) && s[i] == ' ' {
			i++
		}
		var val strings.Builder
		if i < len(s) && s[i] == '#' { // hex-encoded BER value: keep it as written
			j := i + 1
			for j < len(s) && s[j] != ',' && s[j] != '+' {
				j++
			}
			val.WriteString(strings.TrimSpace(s[i:j]))
			i = j
		} else {
			trailing := 0
			for i < len(s) && s[i] != ',' && s[i] != '+' {
				c := s[i]
				if c == '\\' {
					if i+1 >= len(s) {
						return nil, fmt.Errorf("at position %d: dangling escape", i)
					}
					if isHex(s[i+1]) && i+2 < len(s) && isHex(s[i+2]) {
						b, _ := hex.DecodeString(s[i+1 : i+3])
						val.WriteByte(b[0])
						i += 3
					} else {
						val.WriteByte(s[i+1])
						i += 2
					}
					trailing = 0
					continue
				}
				if c == ' ' {
					trailing++
				} else {
					trailing = 0
				}
				val.WriteByte(c)
				i++
			}
			v := val.String()
			val.Reset()
			val.WriteString(v[:len(v)-trailing])
		}
		out = append(out, rdn{attr: attr, value: val.String()})
		if i >= len(s) {
			return out, nil
		}
		if s[i] == '+' { // multi-valued RDN: skip the extra pairs
			for i < len(s) && s[i] != ',' {
				if s[i] == '\\' {
					i++
				}
				i++
			}
			if i >= len(s) {
				return out, nil
			}
		}
		i++ // ','
		for i < len(s) && s[i] == ' ' {
			i++
		}
		if i >= len(s) {
			return nil, fmt.Errorf("at position %d: DN ends with a comma", i)
		}
	}
}

// trimDNSpaces trims leading spaces and trailing ones that are not escaped
// (an odd number of backslashes before a space escapes it).
func trimDNSpaces(s string) string {
	s = strings.TrimLeft(s, " ")
	for len(s) > 0 && s[len(s)-1] == ' ' {
		n := 0
		for i := len(s) - 2; i >= 0 && s[i] == '\\'; i-- {
			n++
		}
		if n%2 == 1 {
			break
		}
		s = s[:len(s)-1]
	}
	return s
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// normDN returns the canonical form used to compare DNs: attribute types
// and values in lower case, no optional spaces. Equal DNs normalise alike.
func normDN(s string) (string, error) {
	rdns, err := parseDN(s)
	if err != nil {
		return "", err
	}
	return joinRDNs(rdns), nil
}

func joinRDNs(rdns []rdn) string {
	var b strings.Builder
	for i, r := range rdns {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(r.attr)
		b.WriteByte('=')
		b.WriteString(escapeNorm(strings.ToLower(r.value)))
	}
	return b.String()
}

// escapeNorm escapes the characters that would make a normalised DN
// ambiguous.
func escapeNorm(v string) string {
	if !strings.ContainsAny(v, ",+=\\\"<>;#") && !strings.HasPrefix(v, " ") && !strings.HasSuffix(v, " ") {
		return v
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c == ',' || c == '+' || c == '=' || c == '\\' || c == '"' || c == '<' || c == '>' || c == ';' || c == '#',
			c == ' ' && (i == 0 || i == len(v)-1):
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// isUnder reports whether normalised DN dn equals base or lies below it.
func isUnder(dn, base string) bool {
	if base == "" {
		return true
	}
	return dn == base || strings.HasSuffix(dn, ","+base)
}

// parentOf returns the normalised parent of normalised DN dn.
func parentOf(dn string) string {
	for i := 0; i < len(dn); i++ {
		if dn[i] == '\\' {
			i++
			continue
		}
		if dn[i] == ',' {
			return dn[i+1:]
		}
	}
	return ""
}
