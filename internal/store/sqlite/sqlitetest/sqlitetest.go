// Package sqlitetest damages SQLite database files for tests of what
// tunneld does with them. It is test support: nothing that ships imports
// it.
package sqlitetest

import (
	"database/sql"
	"os"
	"testing"

	_ "modernc.org/sqlite" // the "sqlite" driver
)

// DamageInnerPage overwrites the page header of the root page of table in
// the (closed) database file at path, after checking that it is an
// interior b-tree page: the table must span more than one page. The first
// page (the schema) stays intact, so the file still opens, and reads
// reaching the table through its root fail with SQLITE_CORRUPT, while
// queries served by an index alone may still work.
func DamageInnerPage(t testing.TB, path, table string) {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	var root, pageSize int64
	if _, err := db.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(`SELECT rootpage FROM sqlite_schema WHERE type = 'table' AND name = ?`, table).Scan(&root); err != nil {
		t.Fatalf("root page of %s: %v", table, err)
	}
	if err := db.QueryRow(`PRAGMA page_size`).Scan(&pageSize); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	for _, side := range []string{"-wal", "-shm"} {
		if fi, err := os.Stat(path + side); err == nil && fi.Size() > 0 && side == "-wal" {
			t.Fatalf("%s still has a WAL of %d bytes: close every connection first", path, fi.Size())
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	off := (root - 1) * pageSize
	var typ [1]byte
	if _, err := f.ReadAt(typ[:], off); err != nil {
		t.Fatal(err)
	}
	if typ[0] != 0x02 && typ[0] != 0x05 { // interior index (WITHOUT ROWID) or table b-tree page
		t.Fatalf("root page %d of %s has type %#x, not an interior page: put more rows in it", root, table, typ[0])
	}
	garbage := make([]byte, 64)
	for i := range garbage {
		garbage[i] = 0xA5
	}
	if _, err := f.WriteAt(garbage, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}
