package main

import (
	"flag"
	"fmt"
	"strings"
)

// optList is the -o flag: libfuse-style mount options, comma-separated,
// repeatable; a comma inside a value is written "\,".
type optList []string

func (o *optList) String() string { return strings.Join(*o, ",") }

func (o *optList) Set(v string) error {
	*o = append(*o, splitOptions(v)...)
	return nil
}

// splitOptions splits "a,b=c\,d" into "a" and "b=c,d".
func splitOptions(s string) []string {
	var out []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\' && i+1 < len(s) && s[i+1] == ',':
			cur.WriteByte(',')
			i++
		case s[i] == ',':
			if cur.Len() > 0 {
				out = append(out, cur.String())
			}
			cur.Reset()
		default:
			cur.WriteByte(s[i])
		}
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}

// mountOptions maps ramproc's -o names to its flags: name=value sets the
// flag to value, a bare name sets a boolean flag to the given value.
var mountOptions = map[string]struct {
	flag  string
	value string // for bare options; "" for options that take =value
}{
	"allow_other":  {"allow-other", "true"},
	"ro":           {"read-only", "true"},
	"rw":           {"read-only", "false"},
	"noopen":       {"no-open", "true"},
	"stats":        {"stats", "true"},
	"debug":        {"debug", "true"},
	"max_size":     {"max-size", ""},
	"size":         {"max-size", ""}, // tmpfs's name for it
	"mode":         {"mode", ""},
	"name":         {"name", ""},
	"passthrough":  {"passthrough", ""},
	"metrics_addr": {"metrics-addr", ""},
	"log_format":   {"log-format", ""},
}

// ignoredOptions are the generic options that mount(8), fstab and
// mount.fuse3 pass to every FUSE server (mount.fuse3 adds dev,suid when
// run as root). They are accepted and ignored, as sshfs and rclone do: the
// mount is always nosuid,nodev, which is right for a file of data, and the
// others concern mount(8) and systemd, not the server.
var ignoredOptions = map[string]bool{
	"defaults": true, "dev": true, "nodev": true, "suid": true, "nosuid": true,
	"exec": true, "noexec": true, "auto": true, "noauto": true, "user": true,
	"nouser": true, "users": true, "owner": true, "group": true, "nofail": true,
	"_netdev": true, "async": true, "atime": true, "noatime": true,
	"relatime": true, "norelatime": true, "strictatime": true,
	"diratime": true, "nodiratime": true, "lazytime": true,
	"default_permissions": true, // always on
}

// applyOptions sets fl's flags from -o options, after the command line's
// own flags. Unknown options are one error naming them all. Among -o
// options the last wins, as with mount(8) ("ro,rw" is rw); a -o option
// that contradicts a flag given on the command line (-read-only -o rw) is
// refused: which one was meant cannot be known. given maps the name of
// each flag an option set to how the user spelled it ("-o max_size"), for
// error messages about its value.
func applyOptions(fl *flag.FlagSet, opts []string) (given map[string]string, err error) {
	given = map[string]string{}
	onCommandLine := map[string]bool{}
	fl.Visit(func(f *flag.Flag) { onCommandLine[f.Name] = true })
	var unknown []string
	for _, o := range opts {
		name, value, hasValue := strings.Cut(o, "=")
		if ignoredOptions[name] && !hasValue || strings.HasPrefix(name, "x-") || name == "comment" {
			continue // x-systemd.*, x-gvfs-*, comment=: for other programs
		}
		m, ok := mountOptions[name]
		switch {
		case !ok:
			unknown = append(unknown, fmt.Sprintf("%q", o))
			continue
		case m.value == "" && !hasValue:
			return nil, fmt.Errorf("-o %s needs a value (%s=...)", name, name)
		case m.value != "" && hasValue:
			return nil, fmt.Errorf("-o %s takes no value", name)
		case m.value != "":
			value = m.value
		}
		if onCommandLine[m.flag] {
			if cur := fl.Lookup(m.flag).Value.String(); cur != value {
				spelled := "-" + m.flag
				if cur != "true" {
					spelled += " " + cur
				}
				return nil, fmt.Errorf("%s and -o %s contradict each other; give only one of them", spelled, o)
			}
		}
		if err := fl.Set(m.flag, value); err != nil {
			return nil, fmt.Errorf("-o %s: %v", o, err)
		}
		given[m.flag] = "-o " + name
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("unknown mount option %s; ramproc knows allow_other, ro, rw, max_size=, mode=, name=, passthrough=, noopen, stats, debug, metrics_addr=, log_format= and ignores the generic ones (dev, suid, exec, auto, user, nofail, _netdev, x-*)", strings.Join(unknown, ", "))
	}
	return given, nil
}

// parseInterleaved parses flags anywhere in args, as mount helpers put -o
// after the mountpoint; "--" ends the flags. It returns the other
// arguments, in order.
func parseInterleaved(fl *flag.FlagSet, args []string) ([]string, error) {
	var rest []string
	for i, a := range args {
		if a == "--" {
			rest = append(rest, args[i+1:]...)
			args = args[:i]
			break
		}
	}
	// libfuse also takes "-oOPTS" in one word.
	var split []string
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "-o"); ok && v != "" && !strings.HasPrefix(v, "=") {
			split = append(split, "-o", v)
			continue
		}
		split = append(split, a)
	}
	args = split
	var pos []string
	for {
		if err := fl.Parse(args); err != nil {
			return nil, err
		}
		if fl.NArg() == 0 {
			break
		}
		pos = append(pos, fl.Arg(0))
		args = fl.Args()[1:]
	}
	return append(pos, rest...), nil
}
