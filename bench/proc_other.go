//go:build !linux

package main

import (
	"syscall"
	"time"
)

func procAttr() *syscall.SysProcAttr { return nil }

func cpuTime(int) (time.Duration, error) { return 0, errUnsupported }

func rss(int) (int64, error) { return 0, errUnsupported }

func raiseFileLimit() (uint64, error) { return 0, errUnsupported }

func selfCPU() time.Duration { return 0 }
