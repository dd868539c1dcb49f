package config

import (
	"fmt"
	"slices"
	"strings"
)

// Resolve returns the mappings to use for the service IDs a tunnel
// announced in its SERVICE_IDS message, in announced order, following the
// reference:
//
//   - Repeated IDs count once. No IDs, or the single ID "", is an
//     anonymous (V1) tunnel.
//   - With -s/-d mappings: a single anonymous mapping serves a tunnel
//     with one service (it takes that service's ID) or an anonymous one;
//     named mappings must name exactly the announced IDs.
//   - Without -s/-d mappings: each ID takes its --config-dir entry; an ID
//     with none gets port 0 (any free port) in source mode and is an error
//     in destination mode.
//
// Errors wrap ErrServiceIDs, or ErrMapping/ErrPort for a bad --config-dir
// value. A tunnel with several services and a single anonymous mapping is
// an error here (the reference accepts it and fails at the first stream).
func (c *Config) Resolve(serviceIDs []string) ([]Mapping, error) {
	var ids []string
	for _, id := range serviceIDs {
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	anonymousTunnel := len(ids) == 0 || len(ids) == 1 && ids[0] == ""
	opt := "-s"
	if c.Mode == ModeDestination {
		opt = "-d"
	}

	if len(c.Mappings) > 0 {
		if len(c.Mappings) == 1 && c.Mappings[0].ServiceID == "" {
			m := c.Mappings[0]
			switch {
			case anonymousTunnel:
				return []Mapping{m}, nil
			case len(ids) == 1:
				m.ServiceID = ids[0]
				return []Mapping{m}, nil
			}
			return nil, errorf(ErrServiceIDs, "the tunnel has services %s but %s %s names none: map each, e.g. %s %s", strings.Join(ids, ", "), opt, m, opt, example(ids))
		}
		if anonymousTunnel {
			return nil, errorf(ErrServiceIDs, "the tunnel has no service IDs but %s names %s: give a single port, e.g. %s 5555", opt, mappedIDs(c.Mappings), opt)
		}
		var out []Mapping
		var missing []string
		for _, id := range ids {
			i := slices.IndexFunc(c.Mappings, func(m Mapping) bool { return m.ServiceID == id })
			if i < 0 {
				missing = append(missing, id)
				continue
			}
			out = append(out, c.Mappings[i])
		}
		var unknown []string
		for _, m := range c.Mappings {
			if !slices.Contains(ids, m.ServiceID) {
				unknown = append(unknown, m.ServiceID)
			}
		}
		if len(missing) > 0 || len(unknown) > 0 {
			var notes []string
			if len(unknown) > 0 {
				notes = append(notes, "not in the tunnel: "+strings.Join(unknown, ", "))
			}
			if len(missing) > 0 {
				notes = append(notes, "no mapping: "+strings.Join(missing, ", "))
			}
			return nil, errorf(ErrServiceIDs, "the tunnel has services %s but %s maps %s (%s): map exactly the tunnel's services, e.g. %s %s",
				strings.Join(ids, ", "), opt, mappedIDs(c.Mappings), strings.Join(notes, "; "), opt, example(ids))
		}
		return out, nil
	}

	if anonymousTunnel {
		ids = []string{""}
	}
	var out []Mapping
	for _, id := range ids {
		i := slices.IndexFunc(c.DirMappings, func(e DirEntry) bool { return e.ServiceID == id })
		if i < 0 || id == "" {
			if c.Mode == ModeDestination {
				name := id
				if name == "" {
					name = "the tunnel's (anonymous) service"
				}
				return nil, errorf(ErrServiceIDs, "no mapping for %s: pass %s, or add a %s = PORT line to a file in %s", name, opt+" "+example(ids), orID(id), orDir(c.ConfigDir))
			}
			out = append(out, Mapping{ServiceID: id})
			continue
		}
		e := c.DirMappings[i]
		m, err := parseTarget(strings.TrimSpace(e.Value), c.Mode)
		if err != nil {
			return nil, mappingError(err, "%s line %d: %s = %s: %v", e.File, e.Line, e.ServiceID, e.Value, err)
		}
		m.ServiceID = id
		c.fillDefaultHost(&m)
		out = append(out, m)
	}
	return out, nil
}

func mappedIDs(ms []Mapping) string {
	ids := make([]string, len(ms))
	for i, m := range ms {
		ids[i] = m.ServiceID
	}
	return strings.Join(ids, ", ")
}

func example(ids []string) string {
	parts := make([]string, 0, len(ids))
	for i, id := range ids {
		if id == "" {
			return "5555"
		}
		parts = append(parts, fmt.Sprintf("%s=%d", id, 5555+i))
	}
	return strings.Join(parts, ",")
}

func orID(id string) string {
	if id == "" {
		return "SERVICE_ID"
	}
	return id
}

func orDir(dir string) string {
	if dir == "" {
		return "--config-dir"
	}
	return dir
}
