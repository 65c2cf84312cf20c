"""The one program behind every plugin name (busybox style).

`/opt/cni/bin/<type>` links to the bundle's launcher (`pycni.launch`), which execs this
program when no `pycni daemon` runs the plugin; the name it was called by picks the plugin.
Called as `pycni`, it is the admin command: `pycni <type>` runs a plugin by type,
`pycni version`, `pycni types`, `pycni daemon`, ...
"""

from __future__ import annotations

import os
import sys

from pycni import registry


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv if argv is None else argv
    if getattr(sys, "frozen", False):
        restore_environment(os.environ)
    called_as = os.path.basename(argv[0])
    if called_as in registry.PLUGINS:
        run_plugin(called_as)
    sys.exit(admin(argv[1:]))


def restore_environment(environ: os._Environ[str] | dict[str, str]) -> None:
    """Undo what PyInstaller's bootloader added to our environment (the bundle's library
    directory in LD_LIBRARY_PATH, LD_LIBRARY_PATH_ORIG, its own `_PYI_*` variables), so the
    programs we exec (iptables, nft, other vendors' delegates) get the environment we were
    given and load their own libraries."""
    bundled = os.path.realpath(getattr(sys, "_MEIPASS", os.path.dirname(sys.executable)))
    kept = [entry for entry in environ.get("LD_LIBRARY_PATH", "").split(":")
            if entry and os.path.realpath(entry) != bundled]
    if kept:
        environ["LD_LIBRARY_PATH"] = ":".join(kept)
    else:
        environ.pop("LD_LIBRARY_PATH", None)
    environ.pop("LD_LIBRARY_PATH_ORIG", None)  # the bootloader's copy of what it replaced
    for key in [key for key in environ if key.startswith("_PYI_")]:
        del environ[key]


def run_plugin(plugin_type: str) -> None:
    """Run as the plugin `plugin_type`: VERSION answered without loading the plugin, the
    run handed to `pycni daemon` when one listens, else the plugin loaded and run here."""
    from pycni import launch

    launch.fast_path(plugin_type, sys.argv)
    from pycni import skel

    skel.main(registry.load(plugin_type))


def admin(args: list[str]) -> int:
    from pycni import __version__

    if not args or args[0] in ("-h", "--help", "help"):
        print("usage: pycni <type> | version | types | status | ipam ls|gc | daemon | doctor |\n"
              "       install-cni | install-conf | flanneld | multus\n"
              "  <type>   run the plugin of that CNI type (CNI_* environment, config on stdin)\n"
              "  version  print pycni's version and the CNI versions it speaks\n"
              "  types    list the CNI types this build provides\n"
              "  status   what this node runs: bundle, config in use, daemon, lease, allocations\n"
              "  ipam     list host-local allocations, free leaked ones (pycni ipam --help)\n"
              "  daemon   serve plugin starts from a warm process (pycni daemon --help)\n"
              "  doctor   check this node's CNI setup and say how to fix what is wrong\n"
              "  install-cni   install the bundle into a CNI bin directory (links swapped)\n"
              "  install-conf  write the CNI config once the agent is up; keep the kubeconfig\n"
              "  flanneld the flannel node agent (pycni flanneld --help)\n"
              "  multus   attach or detach a network on a running pod (pycni multus --help)",
              file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    command = args[0]
    if command == "multus" and len(args) > 1:  # bare `pycni multus` is the plugin
        from pycni.meta.multus import hotplug

        return hotplug.main(args[1:])
    if command in registry.PLUGINS:
        run_plugin(command)
    if command == "version":
        from pycni import spec

        print(f"pycni {__version__} (CNI {', '.join(spec.ALL)})")
        return 0
    if command == "ipam":
        from pycni.ipam.host_local import admin as ipam_admin

        return ipam_admin.main(args[1:])
    if command == "daemon":
        from pycni import daemon

        return daemon.main(args[1:])
    if command == "status":
        from pycni import status

        return status.main(args[1:])
    if command == "doctor":
        from pycni import doctor

        return doctor.main(args[1:])
    if command in ("install-cni", "install-conf"):
        from pycni import install

        run = install.install_cni_main if command == "install-cni" else install.install_conf_main
        return run(args[1:])
    if command == "flanneld":
        from pycni.plugins.flannel import agent

        return agent.main(args[1:])
    if command == "types":
        print("\n".join(sorted(registry.PLUGINS)))
        return 0
    print(f"pycni: unknown command {command!r} (try: pycni help)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    main()
