package main

import (
	"bytes"
	"encoding"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"github.com/imapgw/imapgw/conf"
)

const exampleConfig = "../../imapgw.example.toml"

// TestExampleConfig: `imapgw check` accepts imapgw.example.toml as shipped,
// without a warning.
func TestExampleConfig(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"check", "-config", exampleConfig}, &out, &errb); code != 0 || errb.Len() > 0 {
		t.Fatalf("imapgw check -config %s = %d\n%s%s", exampleConfig, code, out.String(), errb.String())
	}
}

// exampleIntended are the keys imapgw.example.toml sets to something other
// than the default, on purpose: the lines marked CHANGE, and [[listen]],
// which has no default.
var exampleIntended = []string{"server.hostname", "acme.email", "listen"}

// TestExampleConfigKeys: every key conf knows is in imapgw.example.toml, set
// or commented out ("#key = ..."), so a new key without an example line fails
// here; and every key set there has its default value.
func TestExampleConfigKeys(t *testing.T) {
	data, err := os.ReadFile(exampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	// The commented-out settings ("#[cluster]", "#redis = ...") must be valid
	// TOML too: switched on, they are what an operator gets.
	all := regexp.MustCompile(`(?m)^#(\[|[a-z_]+ = )`).ReplaceAll(data, []byte("$1"))
	var anything map[string]any
	md, err := toml.Decode(string(all), &anything)
	if err != nil {
		t.Fatalf("%s with its commented-out settings switched on: %v", exampleConfig, err)
	}
	documented := map[string]bool{}
	for _, k := range md.Keys() {
		documented[k.String()] = true
	}
	for _, key := range confKeys(reflect.TypeFor[conf.Config](), "") {
		if !documented[key] {
			t.Errorf("%s has no line for %s: add it with its default and a comment", exampleConfig, key)
		}
	}

	cfg, err := conf.Load(exampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	compareDefaults(t, reflect.ValueOf(*cfg), reflect.ValueOf(*conf.Default()), "")
}

// confKeys lists the dotted keys of the TOML tables described by typ, as
// conf decodes them: struct fields by their toml tag, arrays of tables
// ("listen") by their element's fields, and values (durations, prefixes,
// lists) as keys.
func confKeys(typ reflect.Type, prefix string) []string {
	var keys []string
	for f := range typ.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "" || name == "-" {
			continue
		}
		key := prefix + name
		if t := tableType(f.Type); t != nil {
			keys = append(keys, confKeys(t, key+".")...)
			continue
		}
		keys = append(keys, key)
	}
	return keys
}

// tableType is the struct a field of type t decodes as a table (or array of
// tables), or nil for a value.
func tableType(t reflect.Type) reflect.Type {
	if t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || reflect.PointerTo(t).Implements(reflect.TypeFor[encoding.TextUnmarshaler]()) {
		return nil
	}
	return t
}

// compareDefaults reports the values of got that differ from want, except
// the exampleIntended keys; nil and empty lists are equal.
func compareDefaults(t *testing.T, got, want reflect.Value, prefix string) {
	t.Helper()
	for i := range got.NumField() {
		f := got.Type().Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		key := prefix + name
		switch {
		case name == "" || name == "-" || slices.Contains(exampleIntended, key):
		case f.Type.Kind() == reflect.Slice && tableType(f.Type) != nil:
			// Arrays of tables ([[backend.server]]) have no default.
		case tableType(f.Type) != nil:
			compareDefaults(t, got.Field(i), want.Field(i), key+".")
		case f.Type.Kind() == reflect.Slice && got.Field(i).Len() == 0 && want.Field(i).Len() == 0:
		case !reflect.DeepEqual(got.Field(i).Interface(), want.Field(i).Interface()):
			t.Errorf("%s sets %s = %v, the default is %v", exampleConfig, key, got.Field(i).Interface(), want.Field(i).Interface())
		}
	}
}
