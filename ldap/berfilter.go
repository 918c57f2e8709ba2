package ldap

import (
	"errors"
	"fmt"
)

// The front end decodes search filters from BER itself. (go-ldap's
// DecompileFilter, which gldap uses, fails on extensible matches with
// dnAttributes once they have crossed the wire, and gldap then drops the
// connection.)

// decodeFilter reads an RFC 4511 Filter element.
func decodeFilter(el tlv, depth int) (*lfilter, error) {
	if depth > maxFilterDepth {
		return nil, errors.New("filter nested too deeply")
	}
	switch el.tag {
	case 0xa0, 0xa1: // and, or
		f := &lfilter{kind: fAnd}
		if el.tag == 0xa1 {
			f.kind = fOr
		}
		kids, err := children(el.body)
		if err != nil {
			return nil, err
		}
		for _, k := range kids {
			c, err := decodeFilter(k, depth+1)
			if err != nil {
				return nil, err
			}
			f.kids = append(f.kids, c)
		}
		return f, nil
	case 0xa2: // not
		kids, err := children(el.body)
		if err != nil || len(kids) != 1 {
			return nil, errors.New("not must hold exactly one filter")
		}
		c, err := decodeFilter(kids[0], depth+1)
		if err != nil {
			return nil, err
		}
		return &lfilter{kind: fNot, kids: []*lfilter{c}}, nil
	case 0x87: // present
		return newItem(fPresent, string(el.body), "")
	case 0xa3, 0xa5, 0xa6, 0xa8: // equality, >=, <=, approx
		kids, err := children(el.body)
		if err != nil || len(kids) != 2 || kids[0].tag != 0x04 || kids[1].tag != 0x04 {
			return nil, errors.New("bad attribute value assertion")
		}
		kind := map[byte]int{0xa3: fEqual, 0xa5: fGreater, 0xa6: fLess, 0xa8: fApprox}[el.tag]
		return newItem(kind, string(kids[0].body), string(kids[1].body))
	case 0xa4: // substrings
		kids, err := children(el.body)
		if err != nil || len(kids) != 2 || kids[0].tag != 0x04 || kids[1].tag != 0x30 {
			return nil, errors.New("bad substring filter")
		}
		f, err := newItem(fSubstr, string(kids[0].body), "")
		if err != nil {
			return nil, err
		}
		parts, err := children(kids[1].body)
		if err != nil || len(parts) == 0 {
			return nil, errors.New("a substring filter needs at least one part")
		}
		for i, p := range parts {
			v := f.norm(string(p.body))
			switch {
			case p.tag == 0x80 && i == 0:
				f.init = v
			case p.tag == 0x81:
				if v != "" {
					f.any = append(f.any, v)
				}
			case p.tag == 0x82 && i == len(parts)-1:
				f.final = v
			default:
				return nil, errors.New("substring parts out of order")
			}
		}
		return f, nil
	case 0xa9: // extensible
		kids, err := children(el.body)
		if err != nil {
			return nil, err
		}
		f := &lfilter{kind: fExt}
		hasValue := false
		for _, k := range kids {
			switch k.tag {
			case 0x81:
				f.rule = string(k.body)
			case 0x82:
				f.attr = string(k.body)
			case 0x83:
				f.val, hasValue = string(k.body), true
			case 0x84:
				f.dnAttr = len(k.body) == 1 && k.body[0] != 0
			default:
				return nil, fmt.Errorf("unexpected element %#x in an extensible match", k.tag)
			}
		}
		if !hasValue || f.attr == "" && f.rule == "" {
			return nil, errors.New("an extensible match needs a value and a type or rule")
		}
		if f.attr != "" {
			if !validAttrDesc(f.attr) {
				return nil, fmt.Errorf("%q is not an attribute description", f.attr)
			}
			f.t = lookupAttr(baseAttr(f.attr))
		}
		f.nval = f.norm(f.val)
		return f, nil
	}
	return nil, fmt.Errorf("unknown filter choice %#x", el.tag)
}

func newItem(kind int, attr, val string) (*lfilter, error) {
	if !validAttrDesc(attr) {
		return nil, fmt.Errorf("%q is not an attribute description", attr)
	}
	f := &lfilter{kind: kind, attr: attr, t: lookupAttr(baseAttr(attr)), val: val}
	f.nval = f.norm(val)
	return f, nil
}
