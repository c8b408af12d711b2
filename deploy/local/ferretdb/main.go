// Command ferretdb runs an embedded FerretDB v1 for the local stack, on SQLite or PostgreSQL.
//
// The upstream `cmd/ferretdb` binary panics when installed with `go install`
// (missing version file, FerretDB issue 2982); the embeddable package does not.
package main

import (
	"context"
	"flag"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:27017", "TCP address to listen on")
	backend := flag.String("backend", "sqlite", "storage backend: sqlite or postgresql")
	dataDir := flag.String("data", "data/ferretdb", "directory for the SQLite databases (sqlite backend)")
	pgURL := flag.String("postgresql-url", "", "PostgreSQL connection string (postgresql backend); "+
		"the password may come from PGPASSWORD or PGPASSFILE")
	verbose := flag.Bool("verbose", false, "log at debug level")
	flag.Parse()

	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	config := ferretdb.Config{
		Listener: ferretdb.ListenerConfig{TCP: *listen},
		Logger:   logger,
		Handler:  *backend,
	}
	where := ""
	switch *backend {
	case "sqlite":
		if err := os.MkdirAll(*dataDir, 0o755); err != nil {
			log.Fatalf("create data dir: %v", err)
		}
		config.SQLiteURL = "file:" + *dataDir + "/"
		where = *dataDir
	case "postgresql":
		if *pgURL == "" {
			log.Fatalf("-backend postgresql needs -postgresql-url")
		}
		config.PostgreSQLURL = *pgURL
		where = *pgURL
	default:
		log.Fatalf("unknown -backend %q: sqlite or postgresql", *backend)
	}

	f, err := ferretdb.New(&config)
	if err != nil {
		log.Fatalf("start ferretdb: %v", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	logger.Warn("ferretdb listening", "addr", *listen, "backend", *backend, "data", where)
	if err := f.Run(ctx); err != nil {
		log.Fatalf("ferretdb: %v", err)
	}
}
