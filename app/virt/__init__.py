"""Everything that talks to libvirt or builds its XML; the rest of the app says vm, not domain."""
