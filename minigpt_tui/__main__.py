from minigpt_tui.cli import main

main()
