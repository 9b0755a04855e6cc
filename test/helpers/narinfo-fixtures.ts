// A narinfo exactly as Nix 2.8 wrote it (`nix copy --to file://…` of a path `top` referring to
// `dep`), shared by the narinfo and signature tests; `sig` is its Sig line's value.
export function nixTopNarinfo (sig: string): string {
  return `StorePath: /nix/store/vwkb9ziw1qmjw68j5jhc8hf1fw58vmqj-top
URL: nar/080av70zarbxwk4scsn6i71jadm5hcazr7xdm8ibi58cqjsq693a.nar.xz
Compression: xz
FileHash: sha256:080av70zarbxwk4scsn6i71jadm5hcazr7xdm8ibi58cqjsq693a
FileSize: 168
NarHash: sha256:0y43n2q9vv18qa1136wviva8wkbfc0i5ph4qj9dp74fza9q4kvca
NarSize: 160
References: 1an0wjmmnkdpssynpji7civ9n4hlp17q-dep
Deriver: 7703xdxskkdjf5iszqhzc3f2h29w9r85-top.drv
Sig: ${sig}
`
}
