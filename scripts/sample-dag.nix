# A small sample build for the demo: a DAG of 13 derivations with shared dependencies, whose
# builders use only /bin/sh and coreutils (no nixpkgs, no network). `tag` makes every run new.
{ tag ? "demo" }:
let
  mk = { name, deps ? [ ], sleep ? 1 }: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ''
      echo "building ${name}"
      echo "${tag} ${name}" > $out
      for d in ${toString deps}; do /bin/cat $d >> $out; done
      /bin/sleep ${toString sleep}
    '' ];
  };
  config = mk { name = "config"; };
  libs = builtins.genList (i: mk { name = "lib-${toString i}"; deps = [ config ]; sleep = 2; }) 6;
  tools = builtins.genList (i: mk { name = "tool-${toString i}"; deps = [ (builtins.elemAt libs i) (builtins.elemAt libs (5 - i)) ]; sleep = 2; }) 4;
  docs = mk { name = "docs"; deps = [ config ]; sleep = 3; };
  release = mk { name = "release"; deps = tools ++ [ docs ]; };
in
{ inherit release docs; }
