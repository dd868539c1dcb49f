// Package clidoc writes shell completions (bash, zsh, fish) and a man
// page from a command's pflag definitions, so that the documentation the
// packages ship always matches the flags. Each command has a hidden
// --gen-doc=KIND flag (AddFlag) that the release build runs.
package clidoc
