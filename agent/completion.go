package main

import (
	"bytes"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
)

// completion prints the shell completion script (bash or zsh): the
// commands of the usage text, and each command's flags as its own flag set
// lists them (`COMMAND -h`), so that the script never disagrees with the
// binary. The packages install both.
func (c *cmd) completion(args []string) error {
	if len(args) != 1 || args[0] != "bash" && args[0] != "zsh" {
		return fmt.Errorf("usage: mqha-agent completion bash|zsh")
	}
	script := bashCompletion(c)
	if args[0] == "zsh" {
		// zsh runs the bash function through its bash completion layer.
		script = "#compdef mqha-agent\nautoload -U +X bashcompinit && bashcompinit\n" + script
	}
	_, err := io.WriteString(c.stdout, script)
	return err
}

// commands are the commands of the usage text, in its order.
func commands() []string {
	var out []string
	for _, l := range strings.Split(usage, "\n") {
		if f := strings.Fields(l); len(f) > 0 && strings.HasPrefix(l, "  ") && !strings.HasPrefix(l, "   ") && !slices.Contains(out, f[0]) {
			out = append(out, f[0])
		}
	}
	return out
}

var flagLine = regexp.MustCompile(`(?m)^  -(\S+)`)

// flagsOf are the flags command (words: a command and its subcommand)
// accepts, read from its help.
func flagsOf(c *cmd, words ...string) []string {
	var errb bytes.Buffer
	run(c.ctx, append(words, "-h"), io.Discard, &errb)
	var out []string
	for _, m := range flagLine.FindAllStringSubmatch(errb.String(), -1) {
		if len(m[1]) == 1 {
			out = append(out, "-"+m[1]) // -o, as kubectl spells it
		} else {
			out = append(out, "--"+m[1])
		}
	}
	return out
}

func bashCompletion(c *cmd) string {
	var b strings.Builder
	cmds := commands()
	fmt.Fprintf(&b, "# bash completion for mqha-agent (mqha-agent completion bash)\n_mqha_agent() {\n")
	fmt.Fprintf(&b, "  local cur=${COMP_WORDS[COMP_CWORD]}\n")
	fmt.Fprintf(&b, "  if [ \"$COMP_CWORD\" -eq 1 ]; then\n    COMPREPLY=($(compgen -W %q -- \"$cur\"))\n    return\n  fi\n", strings.Join(cmds, " "))
	fmt.Fprintf(&b, "  local flags=\n  case \"${COMP_WORDS[1]}\" in\n")
	for _, name := range cmds {
		switch name {
		case "pki":
			sub := []string{"init", "issue", "client"}
			fmt.Fprintf(&b, "  pki)\n    if [ \"$COMP_CWORD\" -eq 2 ]; then COMPREPLY=($(compgen -W %q -- \"$cur\")); return; fi\n", strings.Join(sub, " "))
			fmt.Fprintf(&b, "    case \"${COMP_WORDS[2]}\" in\n")
			for _, s := range sub {
				fmt.Fprintf(&b, "    %s) flags=%q ;;\n", s, strings.Join(flagsOf(c, "pki", s), " "))
			}
			fmt.Fprintf(&b, "    esac ;;\n")
		case "completion":
			fmt.Fprintf(&b, "  completion) COMPREPLY=($(compgen -W \"bash zsh\" -- \"$cur\")); return ;;\n")
		case "version":
		default:
			fmt.Fprintf(&b, "  %s) flags=%q ;;\n", name, strings.Join(flagsOf(c, name), " "))
		}
	}
	fmt.Fprintf(&b, "  esac\n")
	fmt.Fprintf(&b, "  if [[ $cur == -* ]]; then COMPREPLY=($(compgen -W \"$flags\" -- \"$cur\")); else COMPREPLY=($(compgen -f -- \"$cur\")); fi\n}\n")
	fmt.Fprintf(&b, "complete -F _mqha_agent mqha-agent\n")
	return b.String()
}
