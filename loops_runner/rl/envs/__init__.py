"""Bundled RL tasks: task-registry problems, guess-the-number, a calculator tool."""
