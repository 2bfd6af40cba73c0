"""``plugin list | install NAME | enable NAME | disable NAME | sync``."""

from __future__ import annotations

from knarr.errors import ConfigError, KnarrError
from knarr.watchman.config import WatchmanConfig
from knarr.watchman.plugins import (
    Plugin,
    install_plugin,
    installed_version,
    load_plugins,
    manifest_path,
    node_python,
    set_enabled,
    uninstall_plugin,
)
from knarr.watchman.upgrade import github_token
from knarr.watchman.versions import satisfies

RESTART_HINT = "restart the node to load the change (knarr-watchman stop, then run)"


async def plugin_command(config: WatchmanConfig, action: str, name: str | None) -> int:
    path = manifest_path(config)
    plugins = load_plugins(path)
    if action in ("enable", "disable"):
        assert name is not None
        set_enabled(path, name, action == "enable")
        print(f"Plugin {name} {action}d in {path}; run `plugin sync` to apply it")
        return 0
    python = node_python(config)
    if action == "list":
        if not plugins:
            print(f"No plugins in {path}")
            return 0
        rows = [("NAME", "SOURCE", "VERSION", "ENABLED", "INSTALLED")]
        for plugin in plugins.values():
            installed = await installed_version(python, plugin.package)
            rows.append((plugin.name, plugin.source, plugin.version or "any",
                         "yes" if plugin.enabled else "no", installed or "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for row in rows:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        return 0
    if action == "install":
        assert name is not None
        plugin = _named(plugins, name, path)
        version = await install_plugin(config, plugin, python, token=github_token(config))
        print(f"Installed plugin {plugin.name} {version} into {python.parent.parent}; "
              f"{RESTART_HINT}")
        return 0
    failed = 0
    changed = False
    for plugin in plugins.values():
        try:
            installed = await installed_version(python, plugin.package)
            if plugin.enabled and (installed is None or not satisfies(installed, plugin.version)):
                version = await install_plugin(config, plugin, python,
                                               token=github_token(config))
                print(f"Installed plugin {plugin.name} {version}")
                changed = True
            elif not plugin.enabled and installed is not None:
                await uninstall_plugin(plugin, python)
                print(f"Removed disabled plugin {plugin.name} {installed}")
                changed = True
            else:
                print(f"Plugin {plugin.name}: {'up to date' if plugin.enabled else 'disabled'}")
        except KnarrError as exc:
            failed += 1
            print(f"error: plugin {plugin.name}: {exc}")
    if changed:
        print(RESTART_HINT)
    return 1 if failed else 0


def _named(plugins: dict[str, Plugin], name: str, path: object) -> Plugin:
    if name not in plugins:
        raise ConfigError(f"{path}: no plugin named {name!r} (known: "
                          f"{', '.join(plugins) or 'none'})")
    return plugins[name]
