package server

import (
	"net/http"

	"github.com/sectun/sectun/internal/console"
)

// newConsole makes the web console on the server's API, store and relay.
func (s *Server) newConsole(creds map[string]string) (*console.Console, error) {
	return console.New(console.Config{
		API:          s.api,
		Store:        s.store,
		Relay:        s.relay,
		Credentials:  creds,
		FailureLimit: s.apiLimit,
		CAPath:       s.caPath,
		Region:       s.cfg.Region,
		Logger:       s.logger,
		Now:          s.cfg.Now,
	})
}

// Handler returns the server's HTTP handler (for tests that make up
// requests, such as a client address beyond loopback).
func (s *Server) Handler() http.Handler { return s.http.Handler }
