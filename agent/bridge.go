package main

import (
	"context"
	"fmt"
	"log/syslog"
	"strconv"
	"strings"
	"time"

	"github.com/mqha/mqha/internal/agent"
	"github.com/mqha/mqha/internal/bridgerole"
)

// The bridge role's commands, run by keepalived on the bridge nodes of a
// cluster with standbys (internal/bridgerole), not by people. They log to
// the journal (syslog), since keepalived keeps no script output.

// journal logs one line under mqha-agent's name, or to stderr without syslog.
func (c *cmd) journal(msg string) {
	if w, err := syslog.New(syslog.LOG_NOTICE|syslog.LOG_DAEMON, "mqha-agent"); err == nil {
		w.Notice(msg)
		w.Close()
		return
	}
	fmt.Fprintln(c.stderr, msg)
}

// bridgeNotify is keepalived's notify: INSTANCE NAME STATE PRIORITY.
func (c *cmd) bridgeNotify(args []string) error {
	if len(args) != 4 {
		return fmt.Errorf("want INSTANCE NAME STATE PRIORITY, as keepalived's notify gives them; got %q", args)
	}
	if args[0] != "INSTANCE" {
		return nil // a sync group's notify: its instances say their own
	}
	prio, err := strconv.Atoi(args[3])
	if err != nil {
		return fmt.Errorf("priority %q is not a number", args[3])
	}
	did, err := bridgerole.Notify(args[2], prio, bridgerole.RestartMosquitto)
	msg := fmt.Sprintf("bridge role: keepalived instance %s is %s: %s", args[1], args[2], did)
	if err != nil {
		msg += ": " + err.Error()
	}
	c.journal(msg)
	return err
}

// bridgeCheck is keepalived's track script: exit 0 passes.
func (c *cmd) bridgeCheck(args []string) error {
	fs, _ := c.flags("bridge-check")
	var cfg bridgerole.CheckConfig
	var brokers, address string
	var files agent.TLSFiles
	fs.StringVar(&cfg.Local, "local", "127.0.0.1:8883", "this node's mosquitto (client listener)")
	fs.StringVar(&cfg.Name, "name", "", "this node's name")
	fs.StringVar(&address, "address", "", "this node's address (the local listener's certificate name)")
	var clients string
	fs.StringVar(&brokers, "brokers", "", "the brokers' bridge listeners, comma-separated")
	fs.StringVar(&clients, "broker-clients", "", "the brokers' client listeners (where bridge masters' marks are read), comma-separated")
	fs.StringVar(&cfg.Markers, "markers", "", "the topic under which bridge masters mark that they bridge")
	fs.StringVar(&cfg.Probes, "probes", "", "the topic under which the master's probe goes through its bridges")
	fs.IntVar(&cfg.Priority, "priority", 0, "this node's priority (of two bridge masters the lower stands down)")
	fs.StringVar(&files.CA, "ca", "/etc/mqha/tls/ca.crt", "the cluster CA")
	fs.StringVar(&files.NodeCA, "node-ca", "", "the node CA (default: the cluster CA)")
	fs.StringVar(&files.Cert, "cert", "/etc/mqha/tls/node.crt", "this node's certificate")
	fs.StringVar(&files.Key, "key", "/etc/mqha/tls/node.key", "this node's key")
	fs.StringVar(&cfg.PIDFile, "pid-file", "/run/mosquitto/mosquitto.pid", "mosquitto's pid file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if cfg.Name == "" || address == "" {
		return fmt.Errorf("--name and --address are required")
	}
	if brokers != "" {
		cfg.Brokers = strings.Split(brokers, ",")
	}
	if clients != "" {
		cfg.BrokerClient = strings.Split(clients, ",")
	}
	local, err := agent.LoadTLS(agent.TLSFiles{CA: files.CA, Cert: files.Cert, Key: files.Key})
	if err != nil {
		return fmt.Errorf("load this node's certificate: %w", err)
	}
	local.ServerName = address
	nodeCA := files.NodeCA
	if nodeCA == "" {
		nodeCA = files.CA
	}
	if cfg.BridgeTLS, err = agent.LoadTLS(agent.TLSFiles{CA: nodeCA, Cert: files.Cert, Key: files.Key}); err != nil {
		return fmt.Errorf("load this node's certificate for the brokers: %w", err)
	}
	cfg.LocalTLS = local
	_, before, _ := bridgerole.Read()
	ctx, cancel := context.WithTimeout(c.ctx, 2500*time.Millisecond)
	defer cancel()
	cfg.Restart = bridgerole.RestartMosquitto
	repaired, err := bridgerole.Run(ctx, cfg)
	if repaired != "" {
		c.journal("bridge check: mosquitto bridged against keepalived's state: " + repaired)
	}
	if ok := err == nil; ok != before.OK || before.At.IsZero() {
		if ok {
			c.journal("bridge check passes")
		} else {
			c.journal("bridge check fails: " + err.Error())
		}
	}
	return err
}
