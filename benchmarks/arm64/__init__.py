"""The ARM64 path under QEMU user-mode emulation: environment (setup.sh, env.py), aarch64 runner, x86 comparison."""
