//! Reads: a page from the fastest server of its home that holds its exact version (hedged to the
//! next one when the first is slow), and reads for re-replication after a server failure.

use super::*;

impl Servers {
    /// Reads several pages; contents in the order asked. Each page comes from the first server
    /// (fastest of its first R, then the rest of its ranking) that holds its exact version.
    pub async fn read_many(&self, space: u32, remotes: &[Remote]) -> Result<Fetched, FetchError> {
        let mut timing = None;
        let mut out: Vec<Option<Vec<u8>>> = vec![None; remotes.len()];
        // Per page: servers still to ask, in order, and what the others said.
        let mut todo: Vec<(usize, Vec<usize>)> = remotes
            .iter()
            .enumerate()
            .map(|(i, r)| (i, self.read_order(r.slot)))
            .collect();
        let mut answers: Vec<Vec<String>> = vec![Vec::new(); remotes.len()];
        let started = Instant::now();
        while !todo.is_empty() {
            // Group the pages by the next server to ask (the first of its candidates that is up).
            let mut per_server: Vec<Vec<usize>> = vec![Vec::new(); self.servers.len()];
            let mut asked = Vec::new();
            let mut waiting = Vec::new();
            for (i, mut order) in todo.drain(..) {
                match order.iter().position(|&s| self.servers[s].up()) {
                    Some(k) => {
                        let s = order.remove(k);
                        per_server[s].push(i);
                        asked.push((i, order, s));
                    }
                    // Every server that may still hold the page is down: wait for one to come
                    // back, or give up once the page has been unreachable for too long.
                    None if !order.is_empty() && started.elapsed() < self.policy.lost_after => {
                        waiting.push((i, order))
                    }
                    None => {
                        let r = remotes[i];
                        let mut what = answers[i].join("; ");
                        if !order.is_empty() {
                            what.push_str("; the other servers stayed unreachable");
                        }
                        return Err(FetchError::Lost {
                            slot: r.slot,
                            version: r.version,
                            what,
                        });
                    }
                }
            }
            // A single-page read (a fault) is hedged: if its server has not answered after about
            // its p99, the next candidate that is up is asked too, and the first copy wins.
            let mut hedge_for: Vec<Option<usize>> = vec![None; remotes.len()];
            for (i, order, _) in &asked {
                hedge_for[*i] = order.iter().copied().find(|&h| self.servers[h].up());
            }
            let futures = per_server
                .iter()
                .enumerate()
                .filter(|(_, idx)| !idx.is_empty())
                .map(|(s, idx)| {
                    let hedge = if idx.len() == 1 {
                        hedge_for[idx[0]]
                    } else {
                        None
                    };
                    async move {
                        let items: Vec<ReadItem> = idx
                            .iter()
                            .map(|&i| ReadItem {
                                key: PageKey::new(space, remotes[i].slot),
                                version: remotes[i].version,
                            })
                            .collect();
                        let Some(h) = hedge else {
                            return (s, self.call(s, |c| async move { c.read_timed(items).await }).await);
                        };
                        let again = items.clone();
                        let primary = self.call(s, |c| async move { c.read_timed(items).await });
                        tokio::pin!(primary);
                        let delay = self.servers[s].hedge_delay(self.policy.timeout);
                        tokio::select! {
                            r = &mut primary => return (s, r),
                            () = tokio::time::sleep(delay) => {}
                        }
                        metrics::counter!("yonder_agent_hedged_reads_total").increment(1);
                        let secondary = self.call(h, |c| async move { c.read_timed(again).await });
                        tokio::pin!(secondary);
                        let want = remotes[idx[0]].version;
                        let found = |o: &Outcome<(Vec<ReadResult>, Timing)>| {
                            matches!(o, Outcome::Done((r, _))
                                if matches!(r.first(), Some(ReadResult::Found { version, .. }) if *version == want))
                        };
                        tokio::select! {
                            r = &mut primary => {
                                if found(&r) { (s, r) } else { (s, pick(r, secondary.await, &found)) }
                            }
                            r = &mut secondary => {
                                if found(&r) { (s, r) } else { (s, primary.await) }
                            }
                        }
                    }
                });
            // Per page: Some(Ok) found, Some(Err(definitive answer)), None (server failed).
            let mut got: Vec<Option<Result<Vec<u8>, String>>> = vec![None; remotes.len()];
            for (s, outcome) in futures_util::future::join_all(futures).await {
                let name = &self.servers[s].name;
                match outcome {
                    Outcome::Done((results, t)) => {
                        if per_server[s].first() == Some(&0) {
                            timing = Some(t);
                        }
                        for (&i, r) in per_server[s].iter().zip(results) {
                            got[i] = Some(match r {
                                ReadResult::Found { version, data }
                                    if version == remotes[i].version =>
                                {
                                    match data {
                                        PageData::Zero => Ok(vec![0; PAGE_SIZE]),
                                        PageData::Bytes(b) if b.len() == PAGE_SIZE => Ok(b),
                                        PageData::Bytes(b) => {
                                            Err(format!("{name}: a page of {} bytes", b.len()))
                                        }
                                    }
                                }
                                other => Err(format!("{name}: {other:?}")),
                            });
                        }
                    }
                    Outcome::Failed(why) => {
                        for &i in &per_server[s] {
                            answers[i].push(format!("{name}: {why}"));
                        }
                    }
                }
            }
            for (i, mut order, s) in asked {
                match got[i].take() {
                    Some(Ok(data)) => out[i] = Some(data),
                    Some(Err(why)) => {
                        answers[i].push(why);
                        todo.push((i, order));
                    }
                    // The server failed and is down: it may hold the page, ask it again once it
                    // is back.
                    None if !self.servers[s].up() => {
                        order.push(s);
                        todo.push((i, order));
                    }
                    // It answered with an error: its answer for this page is final.
                    None => todo.push((i, order)),
                }
            }
            if !waiting.is_empty() {
                todo.extend(waiting);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(Fetched {
            pages: out
                .into_iter()
                .map(|p| p.expect("every page answered"))
                .collect(),
            timing,
        })
    }

    /// Reads pages for re-replication: from servers that are up only, without waiting. Per page:
    /// its content, or `Newer` when a server holds a newer version (it was rewritten since, and
    /// that write placed its own copies), or `Unavailable` when no server that is up has it.
    pub async fn read_for_repair(&self, space: u32, remotes: &[Remote]) -> Vec<RepairRead> {
        let mut out: Vec<Option<RepairRead>> = (0..remotes.len()).map(|_| None).collect();
        let mut todo: Vec<(usize, Vec<usize>)> = remotes
            .iter()
            .enumerate()
            .map(|(i, r)| (i, self.read_order(r.slot)))
            .collect();
        while !todo.is_empty() {
            let mut per_server: Vec<Vec<usize>> = vec![Vec::new(); self.servers.len()];
            let mut asked = Vec::new();
            for (i, mut order) in todo.drain(..) {
                match order.iter().position(|&s| self.servers[s].up()) {
                    Some(k) => {
                        let s = order.remove(k);
                        per_server[s].push(i);
                        asked.push((i, order));
                    }
                    None => out[i] = Some(RepairRead::Unavailable),
                }
            }
            let futures = per_server
                .iter()
                .enumerate()
                .filter(|(_, idx)| !idx.is_empty())
                .map(|(s, idx)| async move {
                    let items: Vec<ReadItem> = idx
                        .iter()
                        .map(|&i| ReadItem {
                            key: PageKey::new(space, remotes[i].slot),
                            version: remotes[i].version,
                        })
                        .collect();
                    (
                        s,
                        self.call(s, |c| async move { c.read(items).await }).await,
                    )
                });
            for (s, outcome) in futures_util::future::join_all(futures).await {
                if let Outcome::Done(results) = outcome {
                    for (&i, r) in per_server[s].iter().zip(results) {
                        match r {
                            ReadResult::Found { version, data }
                                if version == remotes[i].version =>
                            {
                                let bytes = match data {
                                    PageData::Zero => vec![0; PAGE_SIZE],
                                    PageData::Bytes(b) if b.len() == PAGE_SIZE => b,
                                    PageData::Bytes(_) => continue,
                                };
                                out[i] = Some(RepairRead::Data(bytes));
                            }
                            ReadResult::Found { version, .. } if version > remotes[i].version => {
                                tracing::trace!(target: "yonder_agent::slottrace", remote = ?remotes[i], server = s, version, "repair read newer");
                                out[i] = Some(RepairRead::Newer);
                            }
                            _ => {}
                        }
                    }
                }
            }
            for (i, order) in asked {
                if out[i].is_none() {
                    todo.push((i, order));
                }
            }
        }
        out.into_iter()
            .map(|o| o.unwrap_or(RepairRead::Unavailable))
            .collect()
    }

    /// Where to look for `slot`: its first R servers, fastest first, then the rest of its ranking
    /// (a write may have skipped a server that was down or full).
    fn read_order(&self, slot: u64) -> Vec<usize> {
        let ranking = self.ranking(slot);
        let r = self.policy.replicas;
        let mut home = ranking[..r].to_vec();
        home.sort_by(|&a, &b| {
            self.servers[a]
                .latency_us
                .get()
                .total_cmp(&self.servers[b].latency_us.get())
        });
        home.extend_from_slice(&ranking[r..]);
        home
    }
}

/// Of two answers for the same page, the one that found it (else the first).
fn pick<T>(a: Outcome<T>, b: Outcome<T>, found: &impl Fn(&Outcome<T>) -> bool) -> Outcome<T> {
    if !found(&a) && found(&b) {
        b
    } else {
        a
    }
}
