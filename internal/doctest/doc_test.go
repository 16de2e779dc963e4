// Package doctest checks the project's Markdown (README.md and docs/*.md) the
// way a newcomer meets it: every code fence stands alone on its line (a
// fence with text after it does not close its block, and everything below
// renders as code), every relative link and anchor leads somewhere, every
// runnable example it names exists, and the Go programs shown still compile
// against this checkout.
//
// Convention for Go snippets: a ```go block that starts with a package
// clause is a complete program and is built (and vetted) in a module of its
// own, as a user who copies it would; a block that shows only a few
// statements must be preceded by the line
//
//	<!-- go fragment -->
//
// and is then only parsed (as the body of a function). An unmarked fragment
// fails the test, so a snippet is never left unchecked by accident.
package doctest

import (
	"fmt"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"unicode"
)

// fragmentMarker marks a Go block that is not a complete program.
const fragmentMarker = "<!-- go fragment -->"

// block is one fenced code block of a Markdown file.
type block struct {
	line     int    // of the opening fence, 1-based
	info     string // the info string: "go", "sh", or empty
	body     string
	fragment bool // preceded by fragmentMarker
}

// parsed is what the checks need of one Markdown file.
type parsed struct {
	blocks   []block
	headings []string // outside code blocks, without the #s
	text     []string // lines outside code blocks, for links
	problems []string // fence mistakes, with line numbers
}

// openFence is a fence that opens a block: three backticks, then at most
// one word of info string (the language), nothing else.
var openFence = regexp.MustCompile("^```[A-Za-z0-9_+-]*$")

// parseMarkdown splits a Markdown file into code blocks and the rest, and
// reports every fence that does not stand alone. The rules are stricter
// than CommonMark, on purpose: a closing fence is exactly three backticks
// (CommonMark treats "``` The" as a line of code, which silently swallows
// the rest of the file), and an opening fence carries one word.
func parseMarkdown(data string) parsed {
	var p parsed
	lines := strings.Split(data, "\n")
	in := false
	var cur block
	var body []string
	for i, line := range lines {
		n := i + 1
		fence := strings.HasPrefix(strings.TrimLeft(line, " \t"), "```")
		switch {
		case fence && strings.TrimLeft(line, " \t") != line:
			p.problems = append(p.problems, fmt.Sprintf("line %d: indented fence %q (fences start at column 1 here)", n, line))
		case in && fence:
			if line != "```" {
				p.problems = append(p.problems, fmt.Sprintf("line %d: fence with text after it %q (a closing fence stands alone; this one closes nothing)", n, line))
				body = append(body, line)
				continue
			}
			cur.body = strings.Join(body, "\n")
			p.blocks = append(p.blocks, cur)
			in = false
		case fence:
			if !openFence.MatchString(line) {
				p.problems = append(p.problems, fmt.Sprintf("line %d: opening fence %q (at most one word after the backticks)", n, line))
			}
			in = true
			cur = block{line: n, info: strings.TrimPrefix(line, "```")}
			cur.fragment = i > 0 && strings.TrimSpace(lines[i-1]) == fragmentMarker
			body = nil
		case in:
			body = append(body, line)
		default:
			p.text = append(p.text, line)
			if h, ok := strings.CutPrefix(line, "#"); ok {
				p.headings = append(p.headings, strings.TrimSpace(strings.TrimLeft(h, "#")))
			}
		}
	}
	if in {
		p.problems = append(p.problems, fmt.Sprintf("line %d: code block never closed", cur.line))
	}
	return p
}

// slug is the anchor GitHub gives a heading: lower case, punctuation other
// than '-' and '_' dropped, spaces made hyphens.
func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// repoRoot is the checkout this test belongs to.
func repoRoot(t *testing.T) string {
	_, here, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the test source")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(here), "..", ".."))
}

// docs reads README.md and docs/*.md, keyed by path relative to the root.
func docs(t *testing.T) map[string]parsed {
	root := repoRoot(t)
	names, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	names = append(names, filepath.Join(root, "README.md"))
	out := map[string]parsed{}
	for _, name := range names {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, name)
		out[rel] = parseMarkdown(string(data))
	}
	if len(out) < 2 {
		t.Fatalf("found %d Markdown files under %s; want README.md and docs/*.md", len(out), root)
	}
	return out
}

func TestFencesStandAlone(t *testing.T) {
	for name, p := range docs(t) {
		for _, problem := range p.problems {
			t.Errorf("%s: %s", name, problem)
		}
	}
}

// The checker itself: the mistake that once made half the README one code
// block is caught, and correct fences are not.
func TestFenceCheckerCatchesTextAfterFence(t *testing.T) {
	for _, tc := range []struct {
		doc  string
		want int // problems
	}{
		{"a\n```sh\nfio ...\n``` The\nchecks write\n```sh\nls\n```\n", 2}, // the second fence, inside the unclosed block, is reported too
		{"```sh\nls\n", 1},
		{"```go title\nx\n```\n", 1},
		{"  ```\nx\n  ```\n", 2},
		{"a\n```sh\nls\n```\n\n```\nplain\n```\nb `x` ``y``\n", 0},
	} {
		if got := parseMarkdown(tc.doc).problems; len(got) != tc.want {
			t.Errorf("%q: %d problems %q, want %d", tc.doc, len(got), got, tc.want)
		}
	}
	p := parseMarkdown("# Top\n```sh\n# not a heading\n```\n## `ramproc check`: is it a file?\n")
	if got := strings.Join(p.headings, "|"); got != "Top|`ramproc check`: is it a file?" {
		t.Errorf("headings %q", got)
	}
	if got := slug("`ramproc check`: is it a regular file?"); got != "ramproc-check-is-it-a-regular-file" {
		t.Errorf("slug %q", got)
	}
}

// link is a Markdown inline link's target: [text](target).
var link = regexp.MustCompile(`\]\(([^)\s]+)\)`)

func TestLinksLeadSomewhere(t *testing.T) {
	all := docs(t)
	anchors := map[string]map[string]bool{}
	for name, p := range all {
		anchors[name] = map[string]bool{}
		for _, h := range p.headings {
			anchors[name][slug(h)] = true
		}
	}
	root := repoRoot(t)
	for name, p := range all {
		for _, line := range p.text {
			for _, m := range link.FindAllStringSubmatch(line, -1) {
				target := m[1]
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				file, anchor, _ := strings.Cut(target, "#")
				dest := name
				if file != "" {
					dest = filepath.Clean(filepath.Join(filepath.Dir(name), file))
					if _, err := os.Stat(filepath.Join(root, dest)); err != nil {
						t.Errorf("%s: link %q: %v", name, target, err)
						continue
					}
				}
				if anchor != "" {
					if a, ok := anchors[dest]; !ok || !a[anchor] {
						t.Errorf("%s: link %q: %s has no heading with anchor #%s", name, target, dest, anchor)
					}
				}
			}
		}
	}
}

// TestGoSnippetsCompile builds every complete Go program shown in the
// documentation in a throwaway module that requires this checkout through a
// replace directive (as internal/importtest does), and parses every marked
// fragment.
func TestGoSnippetsCompile(t *testing.T) {
	root := repoRoot(t)
	dir := t.TempDir()
	programs := 0
	for name, p := range docs(t) {
		for _, b := range p.blocks {
			if b.info != "go" {
				continue
			}
			where := fmt.Sprintf("%s:%d", name, b.line)
			if b.fragment {
				src := "package p\n\nfunc _() {\n" + b.body + "\n}\n"
				if _, err := parser.ParseFile(token.NewFileSet(), where, src, 0); err != nil {
					t.Errorf("%s: Go fragment does not parse as statements: %v", where, err)
				}
				continue
			}
			if !strings.HasPrefix(strings.TrimSpace(b.body), "package ") {
				t.Errorf("%s: a Go block is either a complete program (starting with a package clause) or marked with %q on the line before it", where, fragmentMarker)
				continue
			}
			programs++
			pkg := filepath.Join(dir, fmt.Sprintf("snippet%d", programs))
			// A line directive makes the compiler's and vet's messages
			// name the document and its line, not the temporary file.
			src := fmt.Sprintf("//line %s:%d\n%s\n", name, b.line+1, b.body)
			if err := os.MkdirAll(pkg, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(pkg, "main.go"), []byte(src), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	if programs == 0 {
		t.Fatal("no complete Go program found in README.md or docs/*.md; the README's first example should be one")
	}
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	gomod := "module example.com/snippets\n\ngo 1.24.0\n\n" +
		"require github.com/ramproc/ramproc v0.0.0\n\n" +
		"replace github.com/ramproc/ramproc => " + root + "\n"
	for name, data := range map[string]string{"go.mod": gomod, "go.sum": string(sum)} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// -mod=mod lets go add the requirements of the replaced module (go-fuse,
	// x/sys) that go.sum already has hashes for; vet also catches what
	// compiles but is wrong (a Printf verb that does not fit).
	for _, args := range [][]string{{"build", "-mod=mod", "./..."}, {"vet", "-mod=mod", "./..."}} {
		cmd := exec.Command("go", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s of the documentation's Go programs: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	t.Logf("%d programs built", programs)
}

// exampleName is a runnable example named in the documentation, as code:
// `ExampleNewKnob` or `fusebridge.Example_childGen` (after "Example", what
// go test accepts: nothing, an upper-case letter or "_").
var exampleName = regexp.MustCompile("`(?:[a-z]+\\.)?(Example(?:[A-Z_][A-Za-z0-9_]*)?)`")

// TestNamedExamplesExist keeps the documentation's lists of runnable
// examples true: every Example... it names is a function of a test file.
func TestNamedExamplesExist(t *testing.T) {
	root := repoRoot(t)
	defined := map[string]bool{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return err
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range regexp.MustCompile(`(?m)^func (Example[A-Za-z0-9_]*)\(`).FindAllSubmatch(src, -1) {
			defined[string(m[1])] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, p := range docs(t) {
		for _, line := range p.text {
			for _, m := range exampleName.FindAllStringSubmatch(line, -1) {
				if ex := m[1]; !defined[ex] {
					t.Errorf("%s names %s, which no test file defines", name, ex)
				}
			}
		}
	}
}

// TestReadmeFrontDoor keeps the README a front door: the commands that run
// the main job and the tests on its first screen, and the library's first
// example (a complete program) within its first 100 lines, ahead of any
// reference material that later edits may add.
func TestReadmeFrontDoor(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	screen := strings.Join(lines[:min(len(lines), 40)], "\n")
	for _, cmd := range []string{"go run ./cmd/ramproc mount ", "go test -race -count=1 ./..."} {
		if !strings.Contains(screen, cmd) {
			t.Errorf("README.md: %q is not on the first screen (40 lines)", cmd)
		}
	}
	p := parseMarkdown(string(data))
	for _, b := range p.blocks {
		if b.info == "go" {
			if b.line > 100 || b.fragment {
				t.Errorf("README.md: the first Go example is at line %d (a fragment: %v); a newcomer finds a complete one within the first 100 lines", b.line, b.fragment)
			}
			return
		}
	}
	t.Error("README.md has no Go example")
}
