package api

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Constraints of the AWS model (iotsecuretunneling 2018-10-05).
var (
	thingNameRE = regexp.MustCompile(`^[a-zA-Z0-9:_-]+$`)
	serviceRE   = regexp.MustCompile(`^[a-zA-Z0-9:_-]+$`)
	tunnelIDRE  = regexp.MustCompile(`^[a-zA-Z0-9_\-+=:]{1,128}$`)
	nextTokenRE = regexp.MustCompile(`^[a-zA-Z0-9_=-]+$`) // length checked apart: RE2 repeats at most 1000
	tagRE       = regexp.MustCompile(`^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$`)
)

const (
	patThingName   = `[a-zA-Z0-9:_-]+`
	patService     = `[a-zA-Z0-9:_-]+`
	patTunnelID    = `[a-zA-Z0-9_\-+=:]{1,128}`
	patNextToken   = `[a-zA-Z0-9_=-]{1,4096}`
	patTag         = `^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$`
	patDescription = `[^\p{C}]{1,2048}`
	maxDescription = 2048
	maxTags        = 200
	maxTagKey      = 128
	maxTagValue    = 256
	maxThingName   = 128
	maxService     = 128
	maxARN         = 1011
	maxMaxResults  = 100
)

// validator collects constraint violations and reports them the way AWS
// (Coral) does: "N validation errors detected: Value 'v' at 'field' failed
// to satisfy constraint: Member must ...; ...".
type validator struct {
	msgs []string
	n    int
}

// add records that value at field breaks constraint. value nil prints as
// null; strings are quoted and shortened.
func (v *validator) add(field string, value any, constraint string) {
	v.n++
	if len(v.msgs) >= maxValidationMessages {
		return
	}
	var val string
	switch x := value.(type) {
	case nil:
		val = "null"
	case string:
		val = "'" + shorten(x) + "'"
	case []string:
		val = "'[" + shorten(strings.Join(x, ", ")) + "]'"
	default:
		val = "'" + shorten(fmt.Sprint(x)) + "'"
	}
	v.msgs = append(v.msgs, "Value "+val+" at '"+field+"' failed to satisfy constraint: "+constraint)
}

func shorten(s string) string {
	if utf8.RuneCountInString(s) <= maxValueInMessage {
		return s
	}
	r := []rune(s)
	return string(r[:maxValueInMessage]) + "..."
}

func (v *validator) err() *apiError {
	if v.n == 0 {
		return nil
	}
	s := "s"
	if v.n == 1 {
		s = ""
	}
	return errorf(CodeValidation, http.StatusBadRequest, "%d validation error%s detected: %s", v.n, s, strings.Join(v.msgs, "; "))
}

func (v *validator) required(field string, p *string) bool {
	if p == nil {
		v.add(field, nil, "Member must not be null")
		return false
	}
	return true
}

// str checks a string's length (in characters) and pattern.
func (v *validator) str(field, s string, minLen, maxLen int, re *regexp.Regexp, pat string) {
	n := utf8.RuneCountInString(s)
	switch {
	case n < minLen:
		v.add(field, s, fmt.Sprintf("Member must have length greater than or equal to %d", minLen))
	case maxLen > 0 && n > maxLen:
		v.add(field, s, fmt.Sprintf("Member must have length less than or equal to %d", maxLen))
	case re != nil && !re.MatchString(s):
		v.add(field, s, "Member must satisfy regular expression pattern: "+pat)
	}
}

func (v *validator) tunnelID(field string, p *string) string {
	if !v.required(field, p) {
		return ""
	}
	v.str(field, *p, 1, 128, tunnelIDRE, patTunnelID)
	return *p
}

func (v *validator) arn(field string, p *string) string {
	if !v.required(field, p) {
		return ""
	}
	v.str(field, *p, 1, maxARN, nil, "")
	return *p
}

// description checks [^\p{C}]{1,2048} (RE2 cannot repeat 2048 times).
func (v *validator) description(field, s string) {
	n := utf8.RuneCountInString(s)
	switch {
	case n < 1:
		v.add(field, s, "Member must have length greater than or equal to 1")
	case n > maxDescription:
		v.add(field, s, fmt.Sprintf("Member must have length less than or equal to %d", maxDescription))
	default:
		for _, r := range s {
			if isOther(r) {
				v.add(field, s, "Member must satisfy regular expression pattern: "+patDescription)
				return
			}
		}
	}
}

// isOther reports whether r is in Unicode category C (control, format,
// surrogate, private use or unassigned), as Java's \p{C}.
func isOther(r rune) bool {
	return !unicode.In(r, unicode.L, unicode.M, unicode.N, unicode.P, unicode.S, unicode.Z)
}

// tags checks a TagList (1..200 tags, unique keys) and returns it.
func (v *validator) tags(field string, tags []tagIn) []tagOut {
	if len(tags) < 1 {
		v.add(field, "[]", "Member must have length greater than or equal to 1")
		return nil
	}
	if len(tags) > maxTags {
		v.add(field, fmt.Sprintf("<%d tags>", len(tags)), fmt.Sprintf("Member must have length less than or equal to %d", maxTags))
		return nil
	}
	out := make([]tagOut, 0, len(tags))
	seen := make(map[string]bool, len(tags))
	for i, t := range tags {
		f := fmt.Sprintf("%s.%d.member", field, i+1)
		okK := v.tagKey(f+".key", t.Key)
		okV := v.required(f+".value", t.Value)
		if okV {
			v.str(f+".value", *t.Value, 0, maxTagValue, tagRE, patTag)
		}
		if !okK || !okV {
			continue
		}
		if seen[*t.Key] {
			v.add(f+".key", *t.Key, "Member must be unique within the tag list")
			continue
		}
		seen[*t.Key] = true
		out = append(out, tagOut{Key: *t.Key, Value: *t.Value})
	}
	return out
}

func (v *validator) tagKey(field string, k *string) bool {
	if !v.required(field, k) {
		return false
	}
	n := v.n
	v.str(field, *k, 1, maxTagKey, tagRE, patTag)
	if v.n == n && strings.HasPrefix(strings.ToLower(*k), "aws:") {
		v.add(field, *k, "Member must not start with the reserved prefix 'aws:'")
	}
	return v.n == n
}

// destinationConfig checks a DestinationConfig and returns its thing name
// (may be empty) and services.
func (v *validator) destinationConfig(field string, dc *destinationConfigIn, maxServices int) (string, []string) {
	var thing string
	if dc.ThingName != nil {
		thing = *dc.ThingName
		v.str(field+".thingName", thing, 1, maxThingName, thingNameRE, patThingName)
	}
	f := field + ".services"
	switch {
	case dc.Services == nil:
		v.add(f, nil, "Member must not be null")
		return thing, nil
	case len(dc.Services) < 1:
		v.add(f, dc.Services, "Member must have length greater than or equal to 1")
		return thing, nil
	case len(dc.Services) > maxServices:
		v.add(f, dc.Services, fmt.Sprintf("Member must have length less than or equal to %d", maxServices))
		return thing, nil
	}
	seen := make(map[string]bool, len(dc.Services))
	for i, s := range dc.Services {
		sf := fmt.Sprintf("%s.%d.member", f, i+1)
		n := v.n
		v.str(sf, s, 1, maxService, serviceRE, patService)
		if v.n == n && seen[s] {
			v.add(sf, s, "Member must be unique within the service list")
		}
		seen[s] = true
	}
	return thing, dc.Services
}
