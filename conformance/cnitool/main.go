// cnitool: a small CNI runtime used by pycni's conformance tests.
//
// It is built against Debian's libcni (golang-github-appc-cni-dev, 1.1.2) in
// GOPATH mode, offline; see ../build-cnitool.sh.
//
// Interface (compatible with upstream containernetworking/cni cnitool):
//
//	cnitool add|check|del <net> <netns>
//	cnitool version <type>                 (extra) plugin VERSION info as JSON
//	cnitool bench <net> <netns> <count>    (extra) timing of ADD/CHECK/DEL/VERSION
//	                                       (CHECK only for cniVersion >= 0.4.0), and the
//	                                       peak RSS of the plugin processes ("maxrss_kb")
//
// Environment:
//
//	NETCONFPATH      directory holding *.conflist / *.conf / *.json (default /etc/cni/net.d)
//	CNI_PATH         ':'-separated plugin search path (default /opt/cni/bin)
//	CNI_IFNAME       interface name (default eth0)
//	CNI_ARGS         "K=V;K=V" -> RuntimeConf.Args
//	CAP_ARGS         JSON object -> RuntimeConf.CapabilityArgs
//	CNI_CONTAINERID  container id (default, as upstream: "cnitool-" + the
//	                 first 10 bytes (20 hex chars) of sha512(absolute netns path))
//	CNI_CACHE_DIR    libcni result-cache directory (default: libcni's /var/lib/cni)
//
// Errors are printed to stderr and the exit status is 1.
//
// Spec 1.1.0 shim
// ---------------
// libcni 1.1.2 only knows spec versions 0.1.0 .. 1.0.0: it cannot parse a
// 1.1.0 result (types/create rejects the version) nor convert a cached result
// to 1.1.0. When the loaded list's cniVersion is exactly "1.1.0", cnitool
// therefore lies to libcni and tells the truth to the plugin:
//
//   - list.CNIVersion, every plugin's Network.CNIVersion (if set), and the
//     cniVersion in list.Bytes / plugin Bytes (if set) are rewritten to
//     "1.0.0" before libcni sees them, so libcni sees a 1.0.0 network;
//   - every plugin invocation goes through shimExec (a wrapper around libcni's
//     own invoke.DefaultExec): on the way INTO the plugin the stdin JSON's
//     top-level "cniVersion" and "prevResult"."cniVersion" are rewritten
//     from "1.0.0" to "1.1.0", so the plugin sees a genuine 1.1.0 config;
//     on the way OUT a result whose top-level "cniVersion" is "1.1.0" is
//     rewritten to "1.0.0" so libcni can parse and cache it;
//   - `add` prints the result with its top-level cniVersion put back to
//     "1.1.0" (the libcni cache keeps the 1.0.0 view).
//
// VERSION invocations are passed through untouched (the plugin's reported
// versions are not rewritten). Lists with any other cniVersion get plain,
// unmodified libcni behaviour.
//
// Known limitation: libcni parses results into its 1.0.0 Go types, so result
// fields that only exist in spec 1.1.0 (e.g. route "mtu"/"advmss"/"priority"/
// "table"/"scope", interface "mtu"/"socketPath"/"pciID") are dropped from the
// printed result, from the cache, and from the prevResult given to the next
// plugin in the chain.
package main

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

const (
	EnvCNIPath        = "CNI_PATH"
	EnvNetDir         = "NETCONFPATH"
	EnvCapabilityArgs = "CAP_ARGS"
	EnvCNIArgs        = "CNI_ARGS"
	EnvCNIIfname      = "CNI_IFNAME"
	EnvContainerID    = "CNI_CONTAINERID"
	EnvCacheDir       = "CNI_CACHE_DIR"

	DefaultNetDir  = "/etc/cni/net.d"
	DefaultCNIPath = "/opt/cni/bin"
	DefaultIfName  = "eth0"

	CmdAdd     = "add"
	CmdCheck   = "check"
	CmdDel     = "del"
	CmdVersion = "version"
	CmdBench   = "bench"

	shimWireVersion   = "1.1.0" // what the plugin sees
	shimLibcniVersion = "1.0.0" // what libcni sees
)

func usage() {
	exe := filepath.Base(os.Args[0])
	fmt.Fprintf(os.Stderr, "%s: Add, check, or remove network interfaces from a network namespace\n", exe)
	fmt.Fprintf(os.Stderr, "  %s add   <net> <netns>\n", exe)
	fmt.Fprintf(os.Stderr, "  %s check <net> <netns>\n", exe)
	fmt.Fprintf(os.Stderr, "  %s del   <net> <netns>\n", exe)
	fmt.Fprintf(os.Stderr, "  %s version <type>\n", exe)
	fmt.Fprintf(os.Stderr, "  %s bench <net> <netns> <count>\n", exe)
	os.Exit(1)
}

func exit(err error) {
	if err == nil {
		os.Exit(0)
	}
	fmt.Fprintf(os.Stderr, "%s\n", err)
	os.Exit(1)
}

// parseArgs turns "K=V;K=V" into libcni's [][2]string. Empty segments (e.g.
// a trailing ';') are ignored; values may contain '='.
func parseArgs(args string) ([][2]string, error) {
	var result [][2]string
	for _, pair := range strings.Split(args, ";") {
		if pair == "" {
			continue
		}
		kv := strings.SplitN(pair, "=", 2)
		if len(kv) != 2 || kv[0] == "" {
			return nil, fmt.Errorf("invalid CNI_ARGS pair %q", pair)
		}
		result = append(result, [2]string{kv[0], kv[1]})
	}
	return result, nil
}

func cniPath() []string {
	p := os.Getenv(EnvCNIPath)
	if p == "" {
		p = DefaultCNIPath
	}
	var out []string
	for _, d := range filepath.SplitList(p) {
		if d != "" {
			out = append(out, d)
		}
	}
	return out
}

func newCNIConfig(exec invoke.Exec) *libcni.CNIConfig {
	// An empty cache dir makes libcni use its default (/var/lib/cni).
	return libcni.NewCNIConfigWithCacheDir(cniPath(), os.Getenv(EnvCacheDir), exec)
}

func defaultExec() *invoke.DefaultExec {
	// Identical to what libcni's ensureExec() builds when given a nil Exec.
	return &invoke.DefaultExec{
		RawExec:       &invoke.RawExec{Stderr: os.Stderr},
		PluginDecoder: version.PluginDecoder{},
	}
}

// ---------------------------------------------------------------------------
// spec 1.1.0 shim (see the package comment)

// shimExec wraps another invoke.Exec and translates cniVersion 1.0.0 <-> 1.1.0
// across the plugin boundary.
type shimExec struct {
	inner invoke.Exec
}

var _ invoke.Exec = &shimExec{}

func (s *shimExec) FindInPath(plugin string, paths []string) (string, error) {
	return s.inner.FindInPath(plugin, paths)
}

func (s *shimExec) Decode(jsonBytes []byte) (version.PluginInfo, error) {
	return s.inner.Decode(jsonBytes)
}

func envCommand(environ []string) string {
	for _, e := range environ {
		if strings.HasPrefix(e, "CNI_COMMAND=") {
			return strings.TrimPrefix(e, "CNI_COMMAND=")
		}
	}
	return ""
}

func (s *shimExec) ExecPlugin(ctx context.Context, pluginPath string, stdinData []byte, environ []string) ([]byte, error) {
	if envCommand(environ) == "VERSION" {
		return s.inner.ExecPlugin(ctx, pluginPath, stdinData, environ)
	}
	in, err := shimStdin(stdinData)
	if err != nil {
		return nil, fmt.Errorf("cnitool 1.1.0 shim: rewriting plugin stdin: %w", err)
	}
	out, err := s.inner.ExecPlugin(ctx, pluginPath, in, environ)
	if err != nil {
		return out, err
	}
	fixed, err := shimResult(out)
	if err != nil {
		return nil, fmt.Errorf("cnitool 1.1.0 shim: rewriting plugin result: %w", err)
	}
	return fixed, nil
}

// setVersionIf rewrites obj["cniVersion"] from `from` to `to` if it is
// present and equal to `from`; it reports whether it changed anything.
func setVersionIf(obj map[string]json.RawMessage, from, to string) (bool, error) {
	raw, ok := obj["cniVersion"]
	if !ok {
		return false, nil
	}
	var v string
	if err := json.Unmarshal(raw, &v); err != nil || v != from {
		return false, nil
	}
	b, err := json.Marshal(to)
	if err != nil {
		return false, err
	}
	obj["cniVersion"] = b
	return true, nil
}

// shimStdin: top-level cniVersion and prevResult.cniVersion 1.0.0 -> 1.1.0.
func shimStdin(data []byte) ([]byte, error) {
	var conf map[string]json.RawMessage
	if err := json.Unmarshal(data, &conf); err != nil {
		return nil, err
	}
	if conf == nil {
		return data, nil
	}
	changed, err := setVersionIf(conf, shimLibcniVersion, shimWireVersion)
	if err != nil {
		return nil, err
	}
	if raw, ok := conf["prevResult"]; ok {
		var prev map[string]json.RawMessage
		if err := json.Unmarshal(raw, &prev); err == nil && prev != nil {
			c, err := setVersionIf(prev, shimLibcniVersion, shimWireVersion)
			if err != nil {
				return nil, err
			}
			if c {
				b, err := json.Marshal(prev)
				if err != nil {
					return nil, err
				}
				conf["prevResult"] = b
				changed = true
			}
		}
	}
	if !changed {
		return data, nil
	}
	return json.Marshal(conf)
}

// shimResult: top-level cniVersion 1.1.0 -> 1.0.0. Output that is empty or
// not a JSON object is passed through for libcni to judge.
func shimResult(data []byte) ([]byte, error) {
	if len(strings.TrimSpace(string(data))) == 0 {
		return data, nil
	}
	var res map[string]json.RawMessage
	if err := json.Unmarshal(data, &res); err != nil || res == nil {
		return data, nil
	}
	changed, err := setVersionIf(res, shimWireVersion, shimLibcniVersion)
	if err != nil {
		return nil, err
	}
	if !changed {
		return data, nil
	}
	return json.Marshal(res)
}

// rewriteBytesVersion rewrites a top-level "cniVersion" in a JSON document.
func rewriteBytesVersion(data []byte, from, to string) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(data, &obj); err != nil {
		return nil, err
	}
	changed, err := setVersionIf(obj, from, to)
	if err != nil || !changed {
		return data, err
	}
	return json.Marshal(obj)
}

// prepareList applies the 1.1.0 shim to the loaded list if needed and returns
// the Exec to use (nil = libcni's default).
func prepareList(list *libcni.NetworkConfigList) (invoke.Exec, error) {
	if list.CNIVersion != shimWireVersion {
		return nil, nil
	}
	list.CNIVersion = shimLibcniVersion
	b, err := rewriteBytesVersion(list.Bytes, shimWireVersion, shimLibcniVersion)
	if err != nil {
		return nil, err
	}
	list.Bytes = b
	for _, p := range list.Plugins {
		if p.Network != nil && p.Network.CNIVersion == shimWireVersion {
			p.Network.CNIVersion = shimLibcniVersion
		}
		b, err := rewriteBytesVersion(p.Bytes, shimWireVersion, shimLibcniVersion)
		if err != nil {
			return nil, err
		}
		p.Bytes = b
	}
	return &shimExec{inner: defaultExec()}, nil
}

// ---------------------------------------------------------------------------

// loadList loads the named network and reports whether the 1.1.0 shim is on.
func loadList(name string) (*libcni.NetworkConfigList, *libcni.CNIConfig, bool, error) {
	netdir := os.Getenv(EnvNetDir)
	if netdir == "" {
		netdir = DefaultNetDir
	}
	list, err := libcni.LoadConfList(netdir, name)
	if err != nil {
		return nil, nil, false, err
	}
	exec, err := prepareList(list)
	if err != nil {
		return nil, nil, false, err
	}
	return list, newCNIConfig(exec), exec != nil, nil
}

// printShimResult prints an ADD result like result.Print() (4-space indent,
// no trailing newline) but with the top-level cniVersion put back to 1.1.0,
// so the caller sees the result in the version of its configuration.
func printShimResult(result types.Result) error {
	b, err := json.Marshal(result)
	if err != nil {
		return err
	}
	if b, err = rewriteBytesVersion(b, shimLibcniVersion, shimWireVersion); err != nil {
		return err
	}
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "    "); err != nil {
		return err
	}
	_, err = out.WriteTo(os.Stdout)
	return err
}

func runtimeConf(netnsArg string) (*libcni.RuntimeConf, error) {
	var capabilityArgs map[string]interface{}
	if v := os.Getenv(EnvCapabilityArgs); len(v) > 0 {
		if err := json.Unmarshal([]byte(v), &capabilityArgs); err != nil {
			return nil, fmt.Errorf("invalid %s: %w", EnvCapabilityArgs, err)
		}
	}

	var cniArgs [][2]string
	if v := os.Getenv(EnvCNIArgs); len(v) > 0 {
		var err error
		if cniArgs, err = parseArgs(v); err != nil {
			return nil, err
		}
	}

	ifName, ok := os.LookupEnv(EnvCNIIfname)
	if !ok {
		ifName = DefaultIfName
	}

	netns, err := filepath.Abs(netnsArg)
	if err != nil {
		return nil, err
	}

	containerID := os.Getenv(EnvContainerID)
	if containerID == "" {
		// Same derivation as upstream cnitool.
		s := sha512.Sum512([]byte(netns))
		containerID = fmt.Sprintf("cnitool-%x", s[:10])
	}

	return &libcni.RuntimeConf{
		ContainerID:    containerID,
		NetNS:          netns,
		IfName:         ifName,
		Args:           cniArgs,
		CapabilityArgs: capabilityArgs,
	}, nil
}

func ms(d time.Duration) float64 {
	return float64(d.Nanoseconds()) / 1e6
}

func bench(ctx context.Context, cninet *libcni.CNIConfig, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf, count int) error {
	out := struct {
		Add     []float64 `json:"add"`
		Check   []float64 `json:"check"`
		Del     []float64 `json:"del"`
		Version []float64 `json:"version"`
		// The largest resident set of any plugin process run (KiB): cnitool's waited-for
		// children, and through them their own (e.g. a delegated IPAM plugin).
		MaxRSSKB int64 `json:"maxrss_kb"`
	}{make([]float64, 0, count), make([]float64, 0, count), make([]float64, 0, count),
		make([]float64, 0, count), 0}

	// Each round is ADD, CHECK (where the list's version has it), DEL: CHECK reads the
	// result libcni cached at ADD, as a runtime's periodic CHECK would.
	withCheck, err := version.GreaterThanOrEqualTo(list.CNIVersion, "0.4.0")
	if err != nil {
		return err
	}
	for i := 0; i < count; i++ {
		t := time.Now()
		if _, err := cninet.AddNetworkList(ctx, list, rt); err != nil {
			return fmt.Errorf("bench add #%d: %w", i, err)
		}
		out.Add = append(out.Add, ms(time.Since(t)))

		if withCheck {
			t = time.Now()
			if err := cninet.CheckNetworkList(ctx, list, rt); err != nil {
				return fmt.Errorf("bench check #%d: %w", i, err)
			}
			out.Check = append(out.Check, ms(time.Since(t)))
		}

		t = time.Now()
		if err := cninet.DelNetworkList(ctx, list, rt); err != nil {
			return fmt.Errorf("bench del #%d: %w", i, err)
		}
		out.Del = append(out.Del, ms(time.Since(t)))
	}

	pluginType := list.Plugins[0].Network.Type
	for i := 0; i < count; i++ {
		t := time.Now()
		if _, err := cninet.GetVersionInfo(ctx, pluginType); err != nil {
			return fmt.Errorf("bench version #%d: %w", i, err)
		}
		out.Version = append(out.Version, ms(time.Since(t)))
	}

	var rusage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &rusage); err != nil {
		return fmt.Errorf("bench getrusage: %w", err)
	}
	out.MaxRSSKB = rusage.Maxrss // Linux: KiB

	b, err := json.Marshal(out)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(os.Stdout, "%s\n", b)
	return err
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	ctx := context.TODO()

	switch os.Args[1] {
	case CmdVersion:
		if len(os.Args) != 3 {
			usage()
		}
		info, err := newCNIConfig(nil).GetVersionInfo(ctx, os.Args[2])
		if err != nil {
			exit(err)
		}
		exit(info.Encode(os.Stdout))

	case CmdAdd, CmdCheck, CmdDel:
		if len(os.Args) != 4 {
			usage()
		}
		list, cninet, shim, err := loadList(os.Args[2])
		if err != nil {
			exit(err)
		}
		rt, err := runtimeConf(os.Args[3])
		if err != nil {
			exit(err)
		}
		switch os.Args[1] {
		case CmdAdd:
			result, err := cninet.AddNetworkList(ctx, list, rt)
			if result != nil {
				if shim {
					_ = printShimResult(result)
				} else {
					_ = result.Print()
				}
			}
			exit(err)
		case CmdCheck:
			exit(cninet.CheckNetworkList(ctx, list, rt))
		case CmdDel:
			exit(cninet.DelNetworkList(ctx, list, rt))
		}

	case CmdBench:
		if len(os.Args) != 5 {
			usage()
		}
		count, err := strconv.Atoi(os.Args[4])
		if err != nil || count < 0 {
			exit(fmt.Errorf("invalid count %q", os.Args[4]))
		}
		list, cninet, _, err := loadList(os.Args[2])
		if err != nil {
			exit(err)
		}
		rt, err := runtimeConf(os.Args[3])
		if err != nil {
			exit(err)
		}
		exit(bench(ctx, cninet, list, rt, count))

	default:
		usage()
	}
}
