// Command localproxy is sectun's local proxy, a drop-in replacement for the
// AWS IoT Secure Tunneling reference local proxy: same options,
// environment variables, configuration files, settings and exit codes.
// Run it with --help.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/sectun/sectun/internal/localproxy"
	"github.com/sectun/sectun/internal/localproxy/config"
)

func main() {
	cfg, action, err := config.Parse(os.Args[1:], config.OSEnvironment())
	if err != nil {
		fmt.Fprintln(os.Stderr, "localproxy:", err)
		os.Exit(1)
	}
	if action != config.ActionRun {
		os.Exit(0) // --help, --version, --export-default-settings: done
	}
	log := localproxy.NewLogger(os.Stdout, cfg.Verbosity)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second signal kills a shutdown that hangs
	}()
	err = localproxy.Run(ctx, cfg, log)
	stop()
	os.Exit(localproxy.Exit(log, err, cfg.StrictExit))
}
