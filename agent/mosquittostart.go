package main

import (
	"fmt"
	"os"
	"time"

	"github.com/mqha/mqha/internal/retained"
)

// peerAnswer bounds how long mosquitto's start waits for another broker to
// answer (all are asked at once).
const peerAnswer = 500 * time.Millisecond

// mosquittoStart runs before mosquitto starts (the unit's ExecStartPre), not
// by people: it drops the retained messages of the persistence file when
// another node holds the cluster's (internal/retained). It logs to its
// stderr, which systemd puts in mosquitto's journal.
func (c *cmd) mosquittoStart(args []string) error {
	fs, _ := c.flags(retained.Command)
	file := fs.String("file", retained.File, "the start file the agent renders")
	db := fs.String("db", retained.DB, "mosquitto's persistence file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	b, err := os.ReadFile(*file)
	if err != nil {
		return fmt.Errorf("%w; retained messages kept (the agent writes this file with mosquitto's configuration)", err)
	}
	s, err := retained.Parse(b)
	if err != nil {
		return fmt.Errorf("%s: %w; retained messages kept", *file, err)
	}
	return s.Prepare(c.ctx, *db, retained.TCP(peerAnswer), c.log)
}
