//go:build !linux

package cluster

func setLowat(uintptr) {}
